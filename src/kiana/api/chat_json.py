"""The assistant's events as JSON, shared by the KI_ana and the OpenAI-compatible routes."""

from __future__ import annotations

import json
from typing import Any

from kiana.assistant.engine import Answer, Citation, Learned
from kiana.assistant.retrieval import Retrieved
from kiana.llm.base import Usage

PREVIEW_CHARS = 200


def dumps(value: Any) -> str:
    """Compact JSON on one line (what an SSE ``data:`` field needs)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def source_json(n: int, item: Retrieved) -> dict[str, Any]:
    block = item.block
    return {
        "n": n,
        "id": block.id,
        "kind": block.kind,
        "created": block.created,
        "author": block.author,
        "similarity": item.similarity,
        "score": item.score,
        "via": list(item.via),
        "text": preview(block.body),
    }


def sources_json(items: list[Retrieved]) -> list[dict[str, Any]]:
    return [source_json(n, item) for n, item in enumerate(items, start=1)]


def citation_json(citation: Citation) -> dict[str, Any]:
    p = citation.provenance
    return {
        "n": citation.n,
        "block": citation.block.to_dict(),
        "provenance": {
            "author": p.author,
            "author_name": p.author_name,
            "role": p.author_role,
            "created": p.created,
            "valid": p.valid,
            "error": p.error,
        },
    }


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "text": answer.text,
        "conversation_id": answer.conversation_id,
        "cancelled": answer.cancelled,
        "finish_reason": answer.finish_reason,
        "usage": usage_json(answer.usage),
        "citations": [citation_json(c) for c in answer.citations],
    }


def learned_json(event: Learned) -> dict[str, Any]:
    return {"created": event.created, "block": event.block.to_dict()}
