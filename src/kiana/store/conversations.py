"""Conversations kept on this device: turns with the citations they showed.

Conversations are local for now (not knowledge blocks); what is worth
keeping becomes a fact through "remember that ..." or fact extraction.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from kiana.errors import InputError, NotFoundError
from kiana.store.db import Conn, Database


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str
    citations: list[str] = field(default_factory=list)  # block ids
    created: int = 0


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    title: str
    created: int
    updated: int
    turns: list[Turn] = field(default_factory=list)


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, title: str) -> str:
        conv_id = "c-" + secrets.token_hex(8)
        now = int(time.time() * 1000)

        def write(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO conversations (id, title, created, updated) VALUES (?, ?, ?, ?)",
                (conv_id, title[:200], now, now),
            )

        self.db.write(write)
        return conv_id

    def append(self, conv_id: str, turns: list[Turn]) -> None:
        now = int(time.time() * 1000)

        def write(conn: Conn) -> None:
            row = conn.one(
                "SELECT COALESCE(MAX(seq), 0) FROM conversation_turns WHERE conversation_id = ?",
                (conv_id,),
            )
            if conn.one("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)) is None:
                raise NotFoundError(f"no conversation {conv_id}")
            seq = int(row[0]) if row else 0
            conn.executemany(
                "INSERT INTO conversation_turns (conversation_id, seq, role, content, citations, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (conv_id, seq + i, t.role, t.content, json.dumps(t.citations), t.created or now)
                    for i, t in enumerate(turns, start=1)
                ],
            )
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv_id))

        self.db.write(write)

    def get(self, conv_id: str, *, last: int | None = None) -> Conversation:
        if not conv_id.startswith("c-") or len(conv_id) > 40:
            raise InputError("a conversation id looks like c-0123456789abcdef")

        def read(conn: Conn) -> tuple[Any, list[Any]]:
            head = conn.one(
                "SELECT id, title, created, updated FROM conversations WHERE id = ?", (conv_id,)
            )
            rows = conn.all(
                "SELECT role, content, citations, created FROM conversation_turns"
                " WHERE conversation_id = ? ORDER BY seq",
                (conv_id,),
            )
            return head, rows

        head, rows = self.db.read(read)
        if head is None:
            raise NotFoundError(f"no conversation {conv_id}")
        turns = [Turn(r[0], r[1], json.loads(r[2]), int(r[3])) for r in rows]
        if last is not None:
            turns = turns[-last:] if last else []
        return Conversation(head[0], head[1], int(head[2]), int(head[3]), turns)

    def recent(self, limit: int = 50) -> list[Conversation]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT id, title, created, updated FROM conversations ORDER BY updated DESC LIMIT ?",
                (limit,),
            )
        )
        return [Conversation(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def delete(self, conv_id: str) -> bool:
        def write(conn: Conn) -> bool:
            conn.execute("DELETE FROM conversation_turns WHERE conversation_id = ?", (conv_id,))
            return bool(conn.execute("DELETE FROM conversations WHERE id = ?", (conv_id,)).rowcount)

        return self.db.write(write)
