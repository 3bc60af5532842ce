"""pgvector backend: one table per model in the store's own PostgreSQL database.

``vec_<model>`` holds the vector as ``vector(dim)`` with an HNSW index
(cosine), next to the columns filters need; filters are SQL ``WHERE``
clauses, and ``hnsw.iterative_scan`` lets a filtered query keep scanning the
graph until it has ``k`` rows. Writes go through the store's single writer.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.errors import StoreError, VectorIndexError
from kiana.memory.vectors.base import VectorHit, VectorItem, as_matrix, slug
from kiana.store import BlockFilter, Database
from kiana.store.db import Conn

M = 16
EF_CONSTRUCTION = 200  # 64 (pgvector's default): recall@10 0.82 at ef_search 200 on 100k
EF_SEARCH = 256  # ef_construction 200, 100k: recall@10 0.947 at 200 (docs/benchmarks.md)
BATCH = 500


def vector_literal(vector: npt.NDArray[np.float32]) -> str:
    return "[" + ",".join(map(repr, vector.astype(np.float32).tolist())) + "]"


class PgVectorIndex:
    name = "pgvector"

    def __init__(
        self, db: Database, model_id: str, dim: int, *, ef_search: int = EF_SEARCH
    ) -> None:
        if db.dialect != "postgres":
            raise VectorIndexError("the pgvector backend needs a PostgreSQL database")
        self.db = db
        self.model_id = model_id
        self.dim = dim
        self.ef_search = int(ef_search)
        self.table = f"vec_{slug(model_id)}"
        # Session settings already made on a (per-thread, long-lived) reader connection.
        self._configured: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._create()

    def _create(self) -> None:
        t = self.table

        def ddl(conn: Conn) -> None:
            installed = conn.one("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
            if not installed:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (block_id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
                " scope TEXT NOT NULL, author TEXT NOT NULL, created BIGINT NOT NULL,"
                f" tags TEXT[] NOT NULL, embedding vector({self.dim}) NOT NULL)"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} USING hnsw"
                f" (embedding vector_cosine_ops) WITH (m = {M}, ef_construction = {EF_CONSTRUCTION})"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_tags ON {t} USING gin (tags)")

        try:
            self.db.write(ddl)
        except StoreError as exc:
            raise VectorIndexError(
                f"cannot set up pgvector ({exc.message}); install the pgvector extension"
                " in PostgreSQL or choose another vectors.backend"
            ) from exc

    def add(self, items: Sequence[VectorItem]) -> None:
        if not items:
            return
        latest = list({it.block_id: it for it in items}.values())
        matrix = as_matrix([it.vector for it in latest], self.dim)
        rows = [
            (
                it.block_id,
                it.kind,
                it.scope,
                it.author,
                it.created,
                list(it.tags),
                vector_literal(v),
            )
            for it, v in zip(latest, matrix, strict=True)
        ]
        sql = (
            f"INSERT INTO {self.table} (block_id, kind, scope, author, created, tags, embedding)"
            " VALUES (?, ?, ?, ?, ?, ?, ?::vector) ON CONFLICT (block_id) DO UPDATE SET"
            " kind = excluded.kind, scope = excluded.scope, author = excluded.author,"
            " created = excluded.created, tags = excluded.tags, embedding = excluded.embedding"
        )
        for start in range(0, len(rows), BATCH):
            part = rows[start : start + BATCH]

            def write(conn: Conn, part: list[tuple[Any, ...]] = part) -> None:
                conn.executemany(sql, part)

            self.db.write(write)

    def remove(self, block_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(block_ids))
        sql = f"DELETE FROM {self.table} WHERE block_id = ANY(?)"
        for start in range(0, len(ids), BATCH):
            part = ids[start : start + BATCH]

            def write(conn: Conn, part: list[str] = part) -> None:
                conn.execute(sql, (part,))

            self.db.write(write)

    def search(
        self, vector: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
    ) -> list[VectorHit]:
        literal = vector_literal(as_matrix(vector, self.dim)[0])
        if k <= 0:
            return []
        where, params = _where(flt)
        sql = (
            f"SELECT block_id, embedding <=> ?::vector AS d FROM {self.table}"
            f" WHERE {where} ORDER BY d LIMIT ?"
        )
        ef = max(self.ef_search, k)

        def query(conn: Conn) -> list[tuple[Any, ...]]:
            if self._configured.get(conn.raw) != ef:  # once per connection, not per query
                conn.execute(f"SET hnsw.ef_search = {ef}")
                conn.execute("SET hnsw.iterative_scan = relaxed_order")
                self._configured[conn.raw] = ef
            return conn.all(sql, [literal, *params, k])

        rows = self.db.read(query)
        hits = [VectorHit(str(r[0]), 1.0 - float(r[1])) for r in rows]
        return sorted(hits, key=lambda h: (-h.score, h.block_id))  # relaxed order: re-sort

    def count(self) -> int:
        row = self.db.read(lambda c: c.one(f"SELECT COUNT(*) FROM {self.table}"))
        return int(row[0]) if row else 0

    def ids(self) -> set[str]:
        rows = self.db.read(lambda c: c.all(f"SELECT block_id FROM {self.table}"))
        return {str(r[0]) for r in rows}

    def flush(self) -> None:
        """Every write is already committed."""

    def discard_other_models(self) -> list[str]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND starts_with(table_name, 'vec_')"
            )
        )
        gone = [str(r[0]) for r in rows if str(r[0]) != self.table]
        for table in gone:

            def drop(conn: Conn, table: str = table) -> None:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')

            self.db.write(drop)
        return gone

    def close(self) -> None:
        """The database belongs to the store, which closes it."""


def _where(flt: BlockFilter | None) -> tuple[str, list[Any]]:
    if flt is None:
        return "TRUE", []
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("kind", flt.kind), ("scope", flt.scope), ("author", flt.author)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if flt.tag is not None:
        clauses.append("tags @> ARRAY[?]::text[]")
        params.append(flt.tag)
    if flt.since is not None:
        clauses.append("created >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append("created < ?")
        params.append(flt.until)
    return (" AND ".join(clauses) or "TRUE"), params
