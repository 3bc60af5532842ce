"""Row helpers for the block repository: column lists, row <-> value conversion, filters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from kiana.blocks import Block, Meta, Ref, Tombstone
from kiana.errors import InputError
from kiana.store.db import Conn, Row
from kiana.store.types import BlockFilter, StoreStats

COLS = "id, v, kind, scope, body, meta, author, created, refs, sig, seq"
BATCH = 500
MAX_PAGE = 1000


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def all_rows(sql: str, params: Sequence[Any], conn: Conn) -> list[Row]:
    return conn.all(sql, params)


def asdict(stats: StoreStats) -> dict[str, Any]:
    return {s: getattr(stats, s) for s in StoreStats.__slots__}


def same_body(conn: Conn, block: Block, stored_hash: str) -> bool:
    """Whether the stored row still holds exactly ``block``'s body (its hash column can lie)."""
    if stored_hash != body_hash(block.body):
        return False
    row = conn.one("SELECT 1 FROM blocks WHERE id = ? AND body = ?", (block.id, block.body))
    return row is not None


def row(block: Block, stored: int, *, fold: bool) -> tuple[Any, ...]:
    """Column values for ``blocks``. ``fold``: fill ``search_text`` (PostgreSQL only).

    PostgreSQL lower-cases for its keyword index with the database's locale,
    which under ``C`` leaves "Über" as it is; so KI_ana folds case itself.
    SQLite's FTS5 tokenizer folds Unicode case on its own.
    """
    meta = block.meta
    search_text = f"{meta.title} {block.body} {' '.join(meta.tags)}".lower() if fold else ""
    return (
        block.id,
        block.v,
        block.kind,
        block.scope,
        block.body,
        json.dumps(meta.to_dict(), ensure_ascii=False, separators=(",", ":")),
        meta.title,
        " ".join(meta.tags),
        meta.source,
        block.author,
        block.created,
        json.dumps([r.to_dict() for r in block.refs], separators=(",", ":")),
        block.sig,
        body_hash(block.body),
        stored,
        search_text,
    )


def block(r: Row) -> Block:
    meta = json.loads(r[5])
    return Block(
        id=r[0],
        v=int(r[1]),
        kind=r[2],
        scope=r[3],
        body=r[4],
        meta=Meta(
            title=meta.get("title", ""),
            tags=tuple(meta.get("tags", ())),
            source=meta.get("source", ""),
            lang=meta.get("lang", ""),
            seq=meta.get("seq"),
        ),
        author=r[6],
        created=int(r[7]),
        refs=tuple(Ref(rel=x["rel"], id=x["id"]) for x in json.loads(r[8])),
        sig=r[9],
    )


def tombstone(r: Row) -> Tombstone:
    return Tombstone(id=r[0], erases=r[1], author=r[2], created=int(r[3]), reason=r[4], sig=r[5])


def prefixed() -> str:
    return ", ".join(f"b.{c.strip()}" for c in COLS.split(","))


def where(flt: BlockFilter) -> tuple[list[str], list[Any]]:
    where = ["b.erased = 0"]
    params: list[Any] = []
    for column, value in (("kind", flt.kind), ("scope", flt.scope), ("author", flt.author)):
        if value is not None:
            where.append(f"b.{column} = ?")
            params.append(value)
    if flt.tag is not None:
        where.append("b.id IN (SELECT block_id FROM block_tags WHERE tag = ?)")
        params.append(flt.tag)
    if flt.since is not None:
        where.append("b.created >= ?")
        params.append(flt.since)
    if flt.until is not None:
        where.append("b.created < ?")
        params.append(flt.until)
    return where, params


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InputError(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def parse_cursor(cursor: str) -> tuple[int, int]:
    try:
        created_text, seq_text = cursor.split(".")
        created, seq = int(created_text), int(seq_text)
    except ValueError as exc:
        raise InputError("invalid page cursor") from exc
    if not (0 <= created < 2**53 and 0 <= seq < 2**62):
        raise InputError("invalid page cursor")
    return created, seq


def chunked_all(conn: Conn, sql: str, values: Sequence[str]) -> Iterable[Row]:
    for i in range(0, len(values), BATCH):
        part = values[i : i + BATCH]
        yield from conn.all(sql.format(", ".join("?" * len(part))), part)


def chunked_list(sql: str, values: Sequence[str], conn: Conn) -> list[Row]:
    return list(chunked_all(conn, sql, values))


def existing(conn: Conn, sql: str, values: Sequence[str]) -> set[str]:
    return {r[0] for r in chunked_all(conn, sql, values)}
