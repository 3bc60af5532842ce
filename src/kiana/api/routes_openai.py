"""An OpenAI-compatible API with KI_ana's memory: point any OpenAI client at
``http://host:port/v1`` with the KI_ana token as its ``api_key``.

- ``GET /v1/models``: ``kiana`` (the chat model with memory), the underlying
  chat model's name (the same model, the same memory) and the embedding model.
- ``POST /v1/chat/completions``: memory is retrieved for the last user
  message and put into the prompt exactly as the assistant does
  (``Assistant.chat_completion``). Turn it off per request with
  ``"kiana": {"memory": false}`` in the body or ``X-KIANA-Memory: off``.
  Responses are ``chat.completion`` objects or ``chat.completion.chunk``
  events ending with ``data: [DONE]``; an extra ``kiana`` field on the final
  response or chunk lists the memory sources and the citations.
- ``POST /v1/embeddings``: the vectors KI_ana indexes its memory with.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``,
with KI_ana's stable codes.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi import Request as FastAPIRequest
from fastapi.responses import JSONResponse

from kiana.api.chat_json import citation_json, dumps, sources_json, usage_json
from kiana.api.deps import Rt, Runtime
from kiana.api.errors import ModelNotFoundError, NotReadyError, openai_error_content
from kiana.api.routes_chat import EMBEDDINGS_MISSING, HEAD_WAIT_S
from kiana.api.schemas_openai import (
    ChatCompletionIn,
    ChatCompletionOut,
    EmbeddingsIn,
    EmbeddingsOut,
    ModelList,
)
from kiana.api.streaming import EventStreamResponse, ThreadEvents, sse
from kiana.assistant.engine import Answer, Delta, Event, Sources
from kiana.assistant.retrieval import Retrieved, estimate_tokens
from kiana.errors import EmbeddingModelError, InputError, KianaError
from kiana.llm.base import ChatMessage, GenerationOptions
from kiana.llm.registry import looks_like_path
from kiana.node import Node
from kiana.store import BlockFilter

log = logging.getLogger("kiana.api")

KIANA_MODEL = "kiana"
MEMORY_HEADER = "X-KIANA-Memory"
_ON = {"on", "true", "1", "yes"}
_OFF = {"off", "false", "0", "no"}

router = APIRouter(prefix="/v1", tags=["openai"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request (OpenAI error object)"},
    404: {"description": "Unknown model (code model_not_found)"},
}


def chat_model_id(rt: Runtime) -> str:
    name = rt.settings.chat_model
    return Path(name).expanduser().name if looks_like_path(name) else name


def _model(model_id: str, created: int, owned_by: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}


@router.get("/models", summary="OpenAI: the models this node serves", response_model=ModelList)
async def models(rt: Rt) -> dict[str, Any]:
    created = rt.node.genesis.created // 1000
    backend = rt.settings.chat_backend
    data = [
        _model(KIANA_MODEL, created, "kiana", kiana={"backend": backend, "memory": True}),
        _model(chat_model_id(rt), created, backend, kiana={"backend": backend, "memory": True}),
    ]
    if await rt.off.read(_embedding_available, rt.node):
        data.append(_model(rt.settings.embedding_model, created, "kiana"))
    return {"object": "list", "data": data}


def _embedding_available(node: Node) -> bool:
    from kiana.memory.embedding.loader import embedding_available

    return embedding_available(node.settings)


# -- chat completions --------------------------------------------------------------------


def _memory_wanted(body: ChatCompletionIn, header: str | None) -> bool:
    if body.kiana is not None and body.kiana.memory is not None:
        return body.kiana.memory
    if header is None:
        return True
    value = header.strip().lower()
    if value in _ON | _OFF:
        return value in _ON
    raise InputError(f"{MEMORY_HEADER} must be 'on' or 'off'")


def _finish(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def _kiana(memory: bool, sources: list[Retrieved], answer: Answer) -> dict[str, Any]:
    return {
        "memory": memory,
        "sources": sources_json(sources),
        "citations": [citation_json(c) for c in answer.citations],
    }


@router.post(
    "/chat/completions",
    summary="OpenAI: chat completion with KI_ana's memory in the prompt",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletionOut,
            "description": "`chat.completion`, or `chat.completion.chunk` events with "
            "`stream: true`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_ERRORS,
    },
)
async def chat_completions(
    body: ChatCompletionIn,
    request: FastAPIRequest,
    rt: Rt,
    x_kiana_memory: Annotated[str | None, Header(alias=MEMORY_HEADER)] = None,
) -> Response:
    if body.model not in (KIANA_MODEL, chat_model_id(rt)):
        raise ModelNotFoundError(
            f"no chat model {body.model!r} here; use {KIANA_MODEL!r} or {chat_model_id(rt)!r}"
        )
    memory = _memory_wanted(body, x_kiana_memory)
    messages = [
        ChatMessage("system" if m.role == "developer" else m.role, m.text) for m in body.messages
    ]
    flt = None
    if body.kiana is not None and (body.kiana.kind or body.kiana.scope or body.kiana.tag):
        flt = BlockFilter(kind=body.kiana.kind, scope=body.kiana.scope, tag=body.kiana.tag)
    assistant = await rt.chat.assistant()
    base = assistant.options
    options = GenerationOptions(
        max_tokens=body.max_completion_tokens or body.max_tokens or base.max_tokens,
        temperature=base.temperature if body.temperature is None else body.temperature,
        top_p=base.top_p if body.top_p is None else body.top_p,
        stop=body.stops,
        seed=None if body.seed is None else body.seed % 2**32,  # llama.cpp takes 32 bits
    )
    events = rt.chat.run(
        lambda cancel: assistant.chat_completion(
            messages, use_memory=memory, flt=flt, options=options, cancel=cancel
        )
    )
    reply = _Reply(
        id="chatcmpl-" + secrets.token_hex(12),
        created=int(time.time()),
        model=body.model,
        memory=memory,
    )
    if not body.stream:
        return JSONResponse(reply.completion(await events.collect(request.receive)))
    head = await events.head(lambda e: isinstance(e, Delta | Answer), request.receive, HEAD_WAIT_S)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return EventStreamResponse(reply.chunks(head, events, include_usage), events.cancel)


@dataclasses.dataclass
class _Reply:
    """One completion's identity, and its events rendered the OpenAI way."""

    id: str
    created: int
    model: str
    memory: bool

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def completion(self, events: list[Event]) -> dict[str, Any]:
        answer = next((e for e in reversed(events) if isinstance(e, Answer)), None)
        if answer is None:  # cancelled before it began: the client left or the node stops
            raise NotReadyError("the answer was cancelled")
        sources = next((e.items for e in events if isinstance(e, Sources)), [])
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "logprobs": None,
                    "finish_reason": _finish(answer),
                }
            ],
            "usage": usage_json(answer.usage),
            "kiana": _kiana(self.memory, sources, answer),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(
            None, dumps({**self._head("chat.completion.chunk"), "choices": [choice], **extra})
        )

    async def chunks(
        self, head: list[Event], events: ThreadEvents[Event], include_usage: bool
    ) -> AsyncIterator[bytes]:
        sources: list[Retrieved] = []

        def render(event: Event) -> list[bytes]:
            nonlocal sources
            if isinstance(event, Sources):
                sources = event.items
            elif isinstance(event, Delta):
                return [self._chunk({"content": event.text})]
            elif isinstance(event, Answer):
                out = [self._chunk({}, _finish(event), kiana=_kiana(self.memory, sources, event))]
                if include_usage:
                    last = {**self._head("chat.completion.chunk"), "choices": []}
                    out.append(sse(None, dumps({**last, "usage": usage_json(event.usage)})))
                return out
            return []

        try:
            yield self._chunk({"role": "assistant", "content": ""})
            for event in head:
                for data in render(event):
                    yield data
            async for event in events:
                for data in render(event):
                    yield data
            yield sse(None, "[DONE]")
        except KianaError as exc:
            log.warning("chat completion failed mid-answer: %s", exc.code)
            yield sse(None, dumps(openai_error_content(exc.http_status, exc.code, exc.message)))
        except Exception as exc:  # noqa: BLE001 - the stream has started; report and end it
            log.error("chat completion failed mid-answer: unexpected %s", type(exc).__name__)
            yield sse(None, dumps(openai_error_content(500, "internal_error", "internal error")))
        finally:
            events.cancel.set()


# -- embeddings ------------------------------------------------------------------------------


@router.post(
    "/embeddings",
    summary="OpenAI: embed texts with KI_ana's embedding model (L2-normalised)",
    response_model=EmbeddingsOut,
    responses={**_ERRORS, 503: {"description": "The embedding stack is not available"}},
)
async def embeddings(body: EmbeddingsIn, rt: Rt) -> dict[str, Any]:
    model = rt.settings.embedding_model
    if body.model not in (model, KIANA_MODEL):
        raise ModelNotFoundError(f"no embedding model {body.model!r} here; use {model!r}")
    texts = body.texts
    vectors = await rt.off.read(_embed, rt.node, texts, body.dimensions)
    data = []
    for index, row in enumerate(vectors):
        if body.encoding_format == "base64":
            value: Any = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            value = row.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(estimate_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _embed(node: Node, texts: list[str], dimensions: int | None) -> Any:
    if not _embedding_available(node):
        raise EmbeddingModelError(EMBEDDINGS_MISSING)
    memory = node.vectors
    if dimensions is not None and dimensions != memory.dim:
        raise InputError(f"{memory.model_id} makes {memory.dim}-dimensional vectors only")
    return memory.embed(texts)
