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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(model, base_url or DEFAULT_URL, timeout, headers)

    def _payload(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> dict[str, Any]:
        payload = self._chat_payload(messages)
        payload["stream_options"] = {"include_usage": True}
        payload.update(sampling(options, "max_tokens"))
        return payload

    def _read(
        self,
        response: httpx.Response,
        cancel: threading.Event | None,
        out: ChatStream,
        started: float,
    ) -> Iterator[str]:
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
                out.usage.prompt_tokens = as_int(usage.get("prompt_tokens"))
                out.usage.completion_tokens = as_int(usage.get("completion_tokens"))
            choices = chunk.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices else None
            if isinstance(choice, dict):
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    first_token(out, started)
                    pieces += 1
                    yield content
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    out.finish_reason = "length" if reason == "length" else "stop"
                    finished = True  # a usage chunk and [DONE] may follow
            if cancelled(cancel, out):
                return
        if cancelled(cancel, out):
            return
        if not finished:
            raise LLMError(
                f"{WHAT} at {self.base_url} ended the stream before the answer was finished"
            )
        out.finish_reason = out.finish_reason or "stop"
        if not out.usage.completion_tokens:
            out.usage.completion_tokens = pieces  # servers without usage: one piece per token

    def _parse(self, data: str, number: int) -> dict[str, Any]:
        obj = json_object(data)
        if obj is None:
            raise LLMError(
                f"{WHAT} at {self.base_url} sent an event that is not a JSON object"
                f" (line {number}, {len(data)} characters)"
            )
        return obj

    def list_models(self) -> list[ModelInfo]:
        """The models the server offers (``GET {base}/models``)."""
        data = self._get_json("GET", "/models")
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

    def _missing(self, names: str) -> str:
        return f"not listed by {WHAT} at {self.base_url}; it serves: {names}"
