"""Client for any OpenAI-compatible server (llama.cpp's server, vLLM, LM Studio, ...).

Plain httpx, not the openai package. ``base_url`` includes the API prefix,
e.g. ``http://127.0.0.1:8080/v1``:

- ``POST {base}/chat/completions`` with ``stream: true`` answers Server-Sent
  Events: ``data: {json chunk}`` lines with ``choices[0].delta.content`` and
  ``finish_reason``, then ``data: [DONE]``. ``stream_options.include_usage``
  asks for a last chunk with ``usage`` (servers that ignore it are fine).
- ``GET {base}/models`` lists the served models (``data[].id``).
- ``Authorization: Bearer <chat_api_key>`` when a key is set.
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

DEFAULT_URL = "http://127.0.0.1:8080/v1"
WHAT = "the OpenAI-compatible server"


class OpenAIChatModel(StreamingHttpModel):
    """A ``ChatModel`` served by an OpenAI-compatible HTTP server."""

    _what = WHAT
    _path = "/chat/completions"

    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str = "",
        timeout: float = 120.0,
    ) -> None:
        self._model = model
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self._timeout = float(timeout)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = make_client(self.base_url, self._timeout, headers)

    @property
    def name(self) -> str:
        return self._model

    def _payload(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if options.seed is not None:
            payload["seed"] = options.seed
        if options.stop:
            payload["stop"] = list(options.stop)
        return payload

    def _read(
        self,
        response: httpx.Response,
        cancel: threading.Event | None,
        out: ChatStream,
        started: float,
    ) -> Iterator[str]:
        first: float | None = None
        pieces = 0
        finished = False
        for number, line in enumerate(response.iter_lines(), start=1):
            if not line.startswith("data:"):
                continue  # blank separators, ": ping" comments, event:/id: fields
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            chunk = self._parse(data, number)
            if "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                raise LLMError(f"{WHAT} at {self.base_url} failed mid-answer: {message}")
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                out.usage.prompt_tokens = _int(usage.get("prompt_tokens"))
                out.usage.completion_tokens = _int(usage.get("completion_tokens"))
            choices = chunk.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices else None
            if isinstance(choice, dict):
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    if first is None:
                        first = time.monotonic()
                        out.usage.extra["first_token_s"] = first - started
                    pieces += 1
                    yield content
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    out.finish_reason = "length" if reason == "length" else "stop"
                    finished = True  # a usage chunk and [DONE] may follow
            if cancel is not None and cancel.is_set():
                out.finish_reason = "cancelled"
                return
        if cancel is not None and cancel.is_set():
            out.finish_reason = "cancelled"
            return
        if not finished:
            raise LLMError(
                f"{WHAT} at {self.base_url} ended the stream before the answer was finished"
            )
        out.finish_reason = out.finish_reason or "stop"
        if not out.usage.completion_tokens:
            out.usage.completion_tokens = pieces  # servers without usage: one piece per token

    def _parse(self, data: str, number: int) -> dict[str, Any]:
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise LLMError(
                f"{WHAT} at {self.base_url} sent an event that is not a JSON object"
                f" (line {number}, {len(data)} characters)"
            )
        return obj

    def list_models(self) -> list[ModelInfo]:
        """The models the server offers (``GET {base}/models``)."""
        try:
            response = self._client.get("/models")
        except httpx.HTTPError as exc:
            raise translate(exc, WHAT, self.base_url, self._timeout) from exc
        if response.status_code >= 400:
            raise status_error(response, WHAT, self.base_url, "")
        try:
            data = response.json()
        except ValueError as exc:
            raise LLMError(f"{WHAT} at {self.base_url}/models did not answer with JSON") from exc
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise LLMError(f"{WHAT} at {self.base_url}/models sent no 'data' list")
        return [
            ModelInfo(
                backend=self.backend,
                name=e["id"],
                available=True,
                detail=f"served by {self.base_url}",
                selected=e["id"] == self._model,
            )
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("id"), str)
        ]

    def info(self) -> ModelInfo:
        """The configured model as the server lists it; never raises for a down server."""
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
            f"not listed by {WHAT} at {self.base_url}; it serves: {names}",
            selected=True,
        )

    def close(self) -> None:
        self._client.close()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
