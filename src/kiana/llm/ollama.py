"""Client for Ollama's native API (https://github.com/ollama/ollama/blob/main/docs/api.md).

- ``POST /api/chat`` with ``stream: true``: newline-delimited JSON objects,
  each with ``message.content``; the last has ``done: true``, ``done_reason``
  and the counters (``prompt_eval_count``, ``eval_count``, durations in ns).
  Generation options go in ``options`` (``num_predict``, ``temperature``,
  ``top_p``, ``seed``, ``stop``); ``keep_alive`` is top level.
- ``GET /api/tags`` lists the local models (``models[].name``, ``size``, ``details``).
- ``POST /api/embed`` with ``input`` (a string or a list) returns ``embeddings``.

Errors: Ollama answers ``{"error": "..."}`` with an HTTP status (404 when the
model is not pulled), and may send ``{"error": ...}`` as a line mid-stream.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from kiana.errors import LLMError
from kiana.llm._http import (
    StreamingHttpModel,
    as_int,
    cancelled,
    first_token,
    json_object,
    sampling,
)
from kiana.llm.base import ChatMessage, ChatStream, GenerationOptions, ModelInfo

DEFAULT_URL = "http://127.0.0.1:11434"
WHAT = "Ollama"


class OllamaChatModel(StreamingHttpModel):
    """A ``ChatModel`` served by an Ollama server."""

    _what = WHAT
    _path = "/api/chat"

    backend = "ollama"

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 120.0,
        keep_alive: str | int | None = None,
    ) -> None:
        super().__init__(model, base_url or DEFAULT_URL, timeout)
        self._keep_alive = keep_alive

    def _payload(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> dict[str, Any]:
        payload = self._chat_payload(messages)
        payload["options"] = sampling(options, "num_predict")
        if self._keep_alive is not None:
            payload["keep_alive"] = self._keep_alive
        return payload

    def _read(
        self,
        response: httpx.Response,
        cancel: threading.Event | None,
        out: ChatStream,
        started: float,
    ) -> Iterator[str]:
        for number, line in enumerate(response.iter_lines(), start=1):
            if not line.strip():
                continue
            obj = self._parse(line, number)
            if "error" in obj:
                raise LLMError(f"{WHAT} at {self.base_url} failed mid-answer: {obj['error']}")
            message = obj.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and content:
                first_token(out, started)
                yield content
            if obj.get("done") is True:
                out.finish_reason = "length" if obj.get("done_reason") == "length" else "stop"
                self._usage(obj, out)
                return
            if cancelled(cancel, out):
                return
        if cancelled(cancel, out):
            return
        raise LLMError(f"{WHAT} at {self.base_url} ended the answer without a final 'done' object")

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        obj = json_object(line)
        if obj is None:
            raise LLMError(
                f"{WHAT} at {self.base_url} sent invalid JSON in its stream"
                f" (line {number}, {len(line)} characters); is this really an Ollama server?"
            )
        return obj

    @staticmethod
    def _usage(obj: dict[str, Any], out: ChatStream) -> None:
        out.usage.prompt_tokens = as_int(obj.get("prompt_eval_count"))
        out.usage.completion_tokens = as_int(obj.get("eval_count"))
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            if isinstance(obj.get(key), int | float):
                out.usage.extra[key.replace("duration", "s")] = obj[key] / 1e9

    def list_models(self) -> list[ModelInfo]:
        """The models the server has pulled (``GET /api/tags``)."""
        data = self._get_json("GET", "/api/tags")
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise LLMError(f"{WHAT} at {self.base_url}/api/tags sent no 'models' list")
        infos = []
        for m in models:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                continue
            raw_details = m.get("details")
            details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
            size = m.get("size") if isinstance(m.get("size"), int) else None
            described = " ".join(
                str(details[k]) for k in ("parameter_size", "quantization_level") if details.get(k)
            )
            infos.append(
                ModelInfo(
                    backend=self.backend,
                    name=m["name"],
                    available=True,
                    detail=f"{described or 'model'} on {self.base_url}",
                    size_bytes=size,
                    selected=same_model(m["name"], self._model),
                )
            )
        return infos

    def _missing(self, names: str) -> str:
        return (
            f"not on {WHAT} at {self.base_url} (run 'ollama pull {self._model}'); it has: {names}"
        )

    def embed(self, texts: str | Sequence[str], model: str | None = None) -> list[list[float]]:
        """Embeddings of ``texts`` (``POST /api/embed``), one vector per text."""
        inputs = [texts] if isinstance(texts, str) else list(texts)
        body: dict[str, Any] = {"model": model or self._model, "input": inputs}
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        data = self._get_json("POST", "/api/embed", body)
        vectors = data.get("embeddings") if isinstance(data, dict) else None
        if (
            not isinstance(vectors, list)
            or len(vectors) != len(inputs)
            or not all(
                isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors
            )
        ):
            raise LLMError(
                f"{WHAT} at {self.base_url}/api/embed did not return {len(inputs)} embeddings"
            )
        return [[float(x) for x in v] for v in vectors]


def same_model(a: str, b: str) -> bool:
    """Ollama names: ``llama3`` means ``llama3:latest``."""

    def norm(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return norm(a) == norm(b)
