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

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from kiana.errors import KianaError, LLMError
from kiana.llm._http import StreamingHttpModel, make_client, status_error, translate
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
        self._model = model
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self._timeout = float(timeout)
        self._keep_alive = keep_alive
        self._client = make_client(self.base_url, self._timeout)

    @property
    def name(self) -> str:
        return self._model

    def _payload(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "num_predict": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if options.seed is not None:
            opts["seed"] = options.seed
        if options.stop:
            opts["stop"] = list(options.stop)
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "options": opts,
        }
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
        first: float | None = None
        for number, line in enumerate(response.iter_lines(), start=1):
            if not line.strip():
                continue
            obj = self._parse(line, number)
            if "error" in obj:
                raise LLMError(f"{WHAT} at {self.base_url} failed mid-answer: {obj['error']}")
            message = obj.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and content:
                if first is None:
                    first = time.monotonic()
                    out.usage.extra["first_token_s"] = first - started
                yield content
            if obj.get("done") is True:
                out.finish_reason = "length" if obj.get("done_reason") == "length" else "stop"
                self._usage(obj, out)
                return
            if cancel is not None and cancel.is_set():
                out.finish_reason = "cancelled"
                return
        if cancel is not None and cancel.is_set():
            out.finish_reason = "cancelled"
            return
        raise LLMError(f"{WHAT} at {self.base_url} ended the answer without a final 'done' object")

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise LLMError(
                f"{WHAT} at {self.base_url} sent invalid JSON in its stream"
                f" (line {number}, {len(line)} characters); is this really an Ollama server?"
            )
        return obj

    @staticmethod
    def _usage(obj: dict[str, Any], out: ChatStream) -> None:
        out.usage.prompt_tokens = _int(obj.get("prompt_eval_count"))
        out.usage.completion_tokens = _int(obj.get("eval_count"))
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            if isinstance(obj.get(key), int | float):
                out.usage.extra[key.replace("duration", "s")] = obj[key] / 1e9

    def _get_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise translate(exc, WHAT, self.base_url, self._timeout) from exc
        if response.status_code >= 400:
            raise status_error(response, WHAT, self.base_url, str((body or {}).get("model", "")))
        try:
            return response.json()
        except ValueError as exc:
            raise LLMError(f"{WHAT} at {self.base_url}{path} did not answer with JSON") from exc

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

    def info(self) -> ModelInfo:
        """The configured model as the server knows it; never raises for a down server."""
        try:
            models = self.list_models()
        except KianaError as exc:
            return ModelInfo(self.backend, self._model, False, exc.message, selected=True)
        for m in models:
            if m.selected:
                return m
        names = ", ".join(m.name for m in models) or "none"
        return ModelInfo(
            self.backend,
            self._model,
            False,
            f"not on {WHAT} at {self.base_url} (run 'ollama pull {self._model}'); it has: {names}",
            selected=True,
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

    def close(self) -> None:
        self._client.close()


def same_model(a: str, b: str) -> bool:
    """Ollama names: ``llama3`` means ``llama3:latest``."""

    def norm(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return norm(a) == norm(b)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
