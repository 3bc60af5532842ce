"""The ``embeddings`` table: the source of truth for vectors, one per live block.

Each row records the model id and dimension with the vector (float32,
little-endian bytes). Rows of another model than the configured one are
never read for search; ``kiana reindex`` replaces them. Erasing a block
deletes its row in the same transaction (a trigger, migration 4).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.blocks import Block
from kiana.memory.vectors.base import VectorItem
from kiana.store import Database
from kiana.store.db import Conn, Row

CHUNK = 500
DTYPE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Doc:
    """What embedding needs from a block: the text, and the fields filters use."""

    block_id: str
    text: str
    kind: str
    scope: str
    author: str
    tags: tuple[str, ...]
    created: int

    def item(self, vector: npt.NDArray[np.float32]) -> VectorItem:
        return VectorItem(
            self.block_id, vector, self.kind, self.scope, self.author, self.tags, self.created
        )


def embed_text(title: str, body: str) -> str:
    """The text a block is embedded from: its title (if any) and body."""
    return f"{title}\n{body}" if title and not body.startswith(title) else body


def doc_for(block: Block) -> Doc:
    return Doc(
        block.id,
        embed_text(block.meta.title, block.body),
        block.kind,
        block.scope,
        block.author,
        tuple(block.meta.tags),
        block.created,
    )


def to_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype=DTYPE).tobytes()


def from_bytes(data: bytes, dim: int) -> npt.NDArray[np.float32]:
    vec = np.frombuffer(bytes(data), dtype=DTYPE)
    if vec.shape != (dim,):
        raise ValueError(f"stored vector has {vec.size} values, expected {dim}")
    return vec.astype(np.float32)


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(values), CHUNK):
        yield values[i : i + CHUNK]


def _all(db: Database, sql: str, params: Sequence[Any]) -> list[Row]:
    return db.read(lambda c: c.all(sql, params))


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class EmbeddingTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(
        self, model: str, dim: int, rows: Iterable[tuple[str, npt.NDArray[np.float32]]]
    ) -> set[str]:
        """Store vectors of live blocks (others are skipped); returns the ids stored."""
        pending = {block_id: to_bytes(vec) for block_id, vec in rows}
        stored = time.time_ns() // 1_000_000

        def write(conn: Conn) -> set[str]:
            done: set[str] = set()
            for part in _chunks(list(pending)):
                live = conn.all(
                    f"SELECT id FROM blocks WHERE erased = 0 AND id IN ({_marks(len(part))})", part
                )
                ids = [str(r[0]) for r in live]
                conn.executemany(
                    "INSERT INTO embeddings (block_id, model, dim, vector, stored)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (block_id) DO UPDATE SET"
                    " model = excluded.model, dim = excluded.dim, vector = excluded.vector,"
                    " stored = excluded.stored",
                    [(i, model, dim, pending[i], stored) for i in ids],
                )
                done.update(ids)
            return done

        return self.db.write(write) if pending else set()

    def delete(self, block_ids: Sequence[str]) -> None:
        def write(conn: Conn) -> None:
            for part in _chunks(list(dict.fromkeys(block_ids))):
                conn.execute(
                    f"DELETE FROM embeddings WHERE block_id IN ({_marks(len(part))})", part
                )

        self.db.write(write)

    def having(self, model: str, block_ids: Sequence[str]) -> set[str]:
        """Which of these blocks have a vector of ``model``."""
        out: set[str] = set()
        for part in _chunks(list(dict.fromkeys(block_ids))):
            sql = f"SELECT block_id FROM embeddings WHERE model = ? AND block_id IN ({_marks(len(part))})"
            out.update(str(r[0]) for r in _all(self.db, sql, [model, *part]))
        return out

    def ids(self, model: str, *, since: int | None = None) -> dict[str, int]:
        """Block id -> ``stored`` of ``model``'s vectors (stored at or after ``since``)."""
        sql = "SELECT block_id, stored FROM embeddings WHERE model = ?"
        params: list[Any] = [model]
        if since is not None:
            sql, params = sql + " AND stored >= ?", [model, since]
        return {str(r[0]): int(r[1]) for r in _all(self.db, sql, params)}

    def newest(self, model: str) -> int:
        """The newest ``stored`` of ``model``'s vectors: moves whenever one is added or
        replaced, by any process. One index lookup: cheap enough before every search."""
        row = self.db.read(
            lambda c: c.one("SELECT MAX(stored) FROM embeddings WHERE model = ?", (model,))
        )
        return int(row[0]) if row and row[0] is not None else 0

    def counts(self) -> dict[str, int]:
        rows = self.db.read(
            lambda c: c.all("SELECT model, COUNT(*) FROM embeddings GROUP BY model")
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def missing_count(self, model: str) -> int:
        row = self.db.read(
            lambda c: c.one(
                "SELECT COUNT(*) FROM blocks b WHERE b.erased = 0 AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.block_id = b.id AND e.model = ?)",
                (model,),
            )
        )
        return int(row[0]) if row else 0

    def missing_docs(self, model: str, *, after_seq: int, limit: int) -> list[tuple[int, Doc]]:
        """Live blocks without a vector of ``model``, in storage order after ``after_seq``."""
        rows = self.db.read(
            lambda c: c.all(
                "SELECT b.seq, b.id, b.title, b.body, b.kind, b.scope, b.author, b.created"
                " FROM blocks b WHERE b.erased = 0 AND b.seq > ? AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.block_id = b.id AND e.model = ?)"
                " ORDER BY b.seq LIMIT ?",
                (after_seq, model, limit),
            )
        )
        tags = self._tags([str(r[1]) for r in rows])
        return [
            (
                int(r[0]),
                Doc(r[1], embed_text(r[2], r[3]), r[4], r[5], r[6], tags.get(r[1], ()), int(r[7])),
            )
            for r in rows
        ]

    def items(self, model: str, dim: int, block_ids: Sequence[str]) -> list[VectorItem]:
        """The stored vectors of these blocks (of ``model``), with their filter fields."""
        rows: list[Row] = []
        for part in _chunks(list(dict.fromkeys(block_ids))):
            sql = (
                "SELECT e.block_id, e.vector, b.kind, b.scope, b.author, b.created"
                " FROM embeddings e JOIN blocks b ON b.id = e.block_id"
                f" WHERE e.model = ? AND b.erased = 0 AND e.block_id IN ({_marks(len(part))})"
            )
            rows.extend(_all(self.db, sql, [model, *part]))
        tags = self._tags([str(r[0]) for r in rows])
        return [
            VectorItem(r[0], from_bytes(r[1], dim), r[2], r[3], r[4], tags.get(r[0], ()), int(r[5]))
            for r in rows
        ]

    def _tags(self, block_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for part in _chunks(block_ids):
            sql = f"SELECT block_id, tag FROM block_tags WHERE block_id IN ({_marks(len(part))})"
            for r in _all(self.db, sql, part):
                out.setdefault(str(r[0]), []).append(str(r[1]))
        return {k: tuple(sorted(v)) for k, v in out.items()}
