"""The assistant over HTTP: chat (Server-Sent Events or one JSON answer), conversations,
models and reindexing.

``POST /chat`` runs ``Assistant.ask`` on a generation thread (see
``kiana.api.streaming``). The events up to the first piece of the answer are
read before the response starts (for at most ``HEAD_WAIT_S``), so bad input,
an unknown conversation or an unreachable backend is a plain JSON error with
its status; a failure after that is an ``error`` event. A client that
disconnects cancels the generation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from kiana.api.chat_json import (
    answer_json,
    dumps,
    learned_json,
    sources_json,
)
from kiana.api.deps import Rt
from kiana.api.errors import NotReadyError
from kiana.api.schemas import (
    CONVERSATION_ID,
    ChatIn,
    ChatOut,
    ConversationOut,
    ConversationsOut,
    DeletedOut,
    ErrorOut,
    ModelsOut,
    ReindexOut,
)
from kiana.api.streaming import EventStreamResponse, ThreadEvents, sse
from kiana.assistant.engine import Answer, Delta, Event, Learned, Sources
from kiana.errors import EmbeddingModelError, KianaError, NotFoundError
from kiana.llm.base import GenerationOptions
from kiana.llm.factory import list_models
from kiana.node import Node
from kiana.store import BlockFilter
from kiana.store.conversations import Conversation, ConversationStore

log = logging.getLogger("kiana.api")

# The response starts at the first piece of the answer, so that errors until then (bad
# input, unknown conversation, backend down) are plain JSON errors with their status;
# but no later than this, so that clients waiting for the headers do not time out.
HEAD_WAIT_S = 10.0
EMBEDDINGS_MISSING = "the embedding stack is not installed: pip install 'kiana[embeddings]'"

router = APIRouter(tags=["assistant"])

_ERR = {"model": ErrorOut}
ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID, max_length=40)]


# -- chat -------------------------------------------------------------------------------


@router.post(
    "/chat",
    summary="Ask the assistant; the answer streams as Server-Sent Events",
    description="Events: `sources` (what memory retrieval found), `delta` (a piece of the "
    "answer), `learned` ('remember that ...' stored a block), `answer` (the final text, the "
    "conversation id and citations with the full signed blocks and their provenance), and "
    "`error` if the backend fails mid-answer. With `stream: false` the answer is one JSON "
    "object. Errors found before the answer starts are ordinary JSON errors.",
    response_model=None,
    responses={
        200: {
            "model": ChatOut,
            "description": "`text/event-stream`, or `ChatOut` with `stream: false`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        400: {**_ERR, "description": "Empty or too long message, malformed conversation id"},
        404: {**_ERR, "description": "No such conversation"},
        503: {**_ERR, "description": "The chat model or its backend is not available"},
    },
)
async def chat(body: ChatIn, request: Request, rt: Rt) -> Response:
    assistant = await rt.chat.assistant()
    flt = None
    if body.kind is not None or body.scope is not None or body.tag is not None:
        flt = BlockFilter(kind=body.kind, scope=body.scope, tag=body.tag)
    options: GenerationOptions | None = None
    if body.max_tokens is not None or body.temperature is not None or body.seed is not None:
        base = assistant.options
        options = dataclasses.replace(
            base,
            max_tokens=base.max_tokens if body.max_tokens is None else body.max_tokens,
            temperature=base.temperature if body.temperature is None else body.temperature,
            seed=base.seed if body.seed is None else body.seed,
        )
    events = rt.chat.run(
        lambda cancel: assistant.ask(
            body.message,
            conversation_id=body.conversation_id,
            flt=flt,
            use_memory=body.use_memory,
            learn=body.learn,
            cancel=cancel,
            options=options,
        )
    )
    if not body.stream:
        return JSONResponse(_chat_out(await events.collect(request.receive)))
    head = await events.head(lambda e: isinstance(e, Delta | Answer), request.receive, HEAD_WAIT_S)
    return EventStreamResponse(_event_stream(head, events), events.cancel)


def _chat_out(events: list[Event]) -> dict[str, Any]:
    answer = next((e for e in reversed(events) if isinstance(e, Answer)), None)
    if answer is None:  # cancelled before it began: the client left or the node stops
        raise NotReadyError("the answer was cancelled")
    sources = next((e.items for e in events if isinstance(e, Sources)), [])
    return {
        **answer_json(answer),
        "sources": sources_json(sources),
        "learned": [learned_json(e) for e in events if isinstance(e, Learned)],
    }


def _encode(event: Event) -> bytes:
    if isinstance(event, Delta):
        return sse("delta", dumps({"text": event.text}))
    if isinstance(event, Sources):
        return sse("sources", dumps({"items": sources_json(event.items)}))
    if isinstance(event, Learned):
        return sse("learned", dumps(learned_json(event)))
    return sse("answer", dumps(answer_json(event)))


async def _event_stream(head: list[Event], events: ThreadEvents[Event]) -> AsyncIterator[bytes]:
    try:
        for event in head:
            yield _encode(event)
        async for event in events:
            yield _encode(event)
    except KianaError as exc:
        log.warning("chat failed mid-answer: %s", exc.code)
        yield sse("error", dumps({"code": exc.code, "message": exc.message}))
    except Exception as exc:  # noqa: BLE001 - the stream has started; report and end it
        log.error("chat failed mid-answer: unexpected %s", type(exc).__name__)
        yield sse("error", dumps({"code": "internal_error", "message": "internal error"}))
    finally:
        events.cancel.set()  # a no-op once finished; stops the generation otherwise


# -- conversations -----------------------------------------------------------------------


def _summary(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "title": c.title, "created": c.created, "updated": c.updated}


@router.get(
    "/conversations",
    summary="Conversations on this device, most recently used first",
    response_model=ConversationsOut,
)
async def conversations(rt: Rt, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    found = await rt.off.read(ConversationStore(rt.node.store.db).recent, limit)
    return {"conversations": [_summary(c) for c in found]}


@router.get(
    "/conversations/{conversation_id}",
    summary="One conversation with all its turns",
    response_model=ConversationOut,
    responses={404: {**_ERR, "description": "No such conversation"}},
)
async def conversation(conversation_id: ConversationId, rt: Rt) -> dict[str, Any]:
    found = await rt.off.read(ConversationStore(rt.node.store.db).get, conversation_id)
    return {**_summary(found), "turns": [asdict(t) for t in found.turns]}


@router.delete(
    "/conversations/{conversation_id}",
    summary="Delete a conversation and its turns (memory blocks are kept)",
    response_model=DeletedOut,
    responses={404: {**_ERR, "description": "No such conversation"}},
)
async def delete_conversation(conversation_id: ConversationId, rt: Rt) -> dict[str, Any]:
    if not await rt.off.write(ConversationStore(rt.node.store.db).delete, conversation_id):
        raise NotFoundError(f"no conversation {conversation_id}")
    return {"id": conversation_id, "deleted": True}


# -- models and vectors ------------------------------------------------------------------


@router.get(
    "/models",
    summary="Chat models of the configured backend, and the embedding index",
    response_model=ModelsOut,
)
async def models(rt: Rt) -> dict[str, Any]:
    infos = await rt.off.read(list_models, rt.settings)
    embeddings = await rt.off.read(_embedding_status, rt.node)
    return {
        "chat": {
            "backend": rt.settings.chat_backend,
            "model": rt.settings.chat_model,
            "models": [asdict(i) for i in infos],
        },
        "embeddings": embeddings,
    }


def _embedding_status(node: Node) -> dict[str, Any]:
    from kiana.memory.embedding.loader import embedding_available

    if not embedding_available(node.settings):
        return {"available": False, "detail": EMBEDDINGS_MISSING}
    try:
        return {"available": True, **node.vectors.status()}
    except KianaError as exc:
        return {"available": False, "detail": exc.message}


@router.post(
    "/reindex",
    summary="Embed every block whose vector is missing or from another model",
    description="Runs on the writer thread and answers when done (long for a large mind).",
    response_model=ReindexOut,
    responses={503: {**_ERR, "description": "The embedding stack is not available"}},
)
async def reindex(rt: Rt) -> dict[str, Any]:
    report = await rt.off.write(_reindex, rt.node)
    return asdict(report)


def _reindex(node: Node) -> Any:
    from kiana.memory.embedding.loader import embedding_available

    if not embedding_available(node.settings):
        raise EmbeddingModelError(EMBEDDINGS_MISSING)
    return node.vectors.reindex()
