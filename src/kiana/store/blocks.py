"""The block repository: put, get, list, keyword search, erase (devices: ``devices.py``).

All methods are synchronous and thread-safe; call them from a thread, never
from the event loop (``kiana.offload`` does that for async callers).
Every block that enters the store is verified here (id, signature, known
author) unless the caller already verified it and says so.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kiana.blocks import Block, Tombstone, verify_block, verify_tombstone
from kiana.errors import ConflictError, ErasedError, InputError, NotFoundError
from kiana.store.db import Conn, Database
from kiana.store.devices import MetaAndDevices
from kiana.store.migrations import current_version, migrate
from kiana.store.rows import (
    COLS as _COLS,
)
from kiana.store.rows import (
    all_rows as _all,
)
from kiana.store.rows import (
    asdict as _asdict,
)
from kiana.store.rows import (
    block as _block,
)
from kiana.store.rows import (
    body_hash,
)
from kiana.store.rows import (
    check_limit as _check_limit,
)
from kiana.store.rows import (
    chunked_all as _chunked_all,
)
from kiana.store.rows import (
    chunked_list as _chunked_list,
)
from kiana.store.rows import (
    existing as _existing,
)
from kiana.store.rows import (
    parse_cursor as _parse_cursor,
)
from kiana.store.rows import (
    prefixed as _prefixed,
)
from kiana.store.rows import (
    row as _row,
)
from kiana.store.rows import (
    same_body as _same_body,
)
from kiana.store.rows import (
    tombstone as _tombstone,
)
from kiana.store.rows import (
    where as _where,
)
from kiana.store.types import BlockFilter, Page, PutResult, SearchHit, StoreStats

_WORD = re.compile(r"\w+", re.UNICODE)


def _now_ms() -> int:
    return int(time.time() * 1000)


class BlockStore(MetaAndDevices):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._keys: dict[str, bytes] | None = None

    @classmethod
    def open(cls, url: str, *, backup_dir: Path | None = None) -> BlockStore:
        db = Database(url)
        try:
            migrate(db, backup_dir=backup_dir)
        except BaseException:
            db.close()
            raise
        return cls(db)

    def close(self) -> None:
        self.db.close()

    # -- blocks: write -------------------------------------------------------

    def put(self, block: Block, *, verified: bool = False) -> PutResult:
        return self.put_many([block], verified=verified)[0]

    def put_many(self, blocks: Sequence[Block], *, verified: bool = False) -> list[PutResult]:
        """Store blocks in one transaction. Verification failures raise before anything is written."""
        if not verified:
            for block in blocks:
                verify_block(block, self.device_key)
        return self.db.write(lambda conn: self._put_locked(conn, blocks))

    def put_batches(
        self, batches: Iterable[Sequence[Block]], *, verified: bool = False
    ) -> list[PutResult]:
        """Store blocks in one transaction, a batch at a time as the iterable yields them.

        For a producer that works between batches (sync checks signatures on another
        thread meanwhile); it runs inside the write, so it must not write to this store.
        Any error, a failed verification too, rolls everything back.
        """

        def write(conn: Conn) -> list[PutResult]:
            results: list[PutResult] = []
            for batch in batches:
                if not verified:
                    for block in batch:
                        verify_block(block, self.device_key)
                results += self._put_locked(conn, batch)
            return results

        return self.db.write(write)

    def _put_locked(self, conn: Conn, blocks: Sequence[Block]) -> list[PutResult]:
        ids = list(dict.fromkeys(b.id for b in blocks))
        erased = _existing(conn, "SELECT erases FROM tombstones WHERE erases IN ({})", ids)
        existing = {
            r[0]: r[1:]
            for r in _chunked_all(
                conn, "SELECT id, sig, body_hash, erased FROM blocks WHERE id IN ({})", ids
            )
        }
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        tags: list[tuple[str, str]] = []
        refs: list[tuple[str, str, str, int]] = []
        seen: set[str] = set()
        stored = _now_ms()
        for block in blocks:
            if block.id in erased:
                results.append(PutResult.ERASED)
                continue
            if block.id in existing or block.id in seen:
                prior = existing.get(block.id)
                if prior is not None and not prior[2] and not _same_body(conn, block, prior[1]):
                    raise ConflictError(f"block {block.id[:12]}… is stored with different content")
                results.append(PutResult.DUPLICATE)
                continue
            seen.add(block.id)
            rows.append(_row(block, stored, fold=conn.dialect == "postgres"))
            tags.extend((t, block.id) for t in block.meta.tags)
            refs.extend((r.id, r.rel, block.id, block.created) for r in block.refs)
            results.append(PutResult.STORED)
        conn.insert_rows(
            "INSERT INTO blocks (id, v, kind, scope, body, meta, title, tags_text, source, author,"
            " created, refs, sig, body_hash, erased, stored, search_text) VALUES {}",
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            rows,
        )
        conn.insert_rows("INSERT INTO block_tags (tag, block_id) VALUES {}", "(?, ?)", tags)
        conn.insert_rows(
            "INSERT INTO block_refs (target, rel, block_id, created) VALUES {}"
            " ON CONFLICT DO NOTHING",
            "(?, ?, ?, ?)",
            refs,
        )
        return results

    def erase(self, tomb: Tombstone, *, verified: bool = False) -> bool:
        """Erase the content of ``tomb.erases`` and keep the tombstone. True if content was removed.

        A tombstone for a block this store has never seen is kept too, so the
        content is refused if it arrives later.
        """
        if not verified:
            verify_tombstone(tomb, self.device_key)

        def write(conn: Conn) -> bool:
            conn.execute(
                "INSERT INTO tombstones (id, erases, author, created, reason, sig, stored)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (tomb.id, tomb.erases, tomb.author, tomb.created, tomb.reason, tomb.sig, _now_ms()),
            )
            cur = conn.execute(
                "UPDATE blocks SET body = '', meta = '{}', title = '', tags_text = '', source = '',"
                " refs = '[]', body_hash = '', search_text = '', erased = 1"
                " WHERE id = ? AND erased = 0",
                (tomb.erases,),
            )
            conn.execute("DELETE FROM block_tags WHERE block_id = ?", (tomb.erases,))
            conn.execute("DELETE FROM block_refs WHERE block_id = ?", (tomb.erases,))
            return bool(cur.rowcount)

        return self.db.write(write)

    def drop_tombstone(self, tomb_id: str) -> bool:
        """Forget a tombstone whose block was never stored here (it was not allowed).

        Refused (False) when the block's content was erased here: that cannot be undone.
        """

        def write(conn: Conn) -> bool:
            row = conn.one("SELECT erases FROM tombstones WHERE id = ?", (tomb_id,))
            if row is None:
                return False
            if conn.one("SELECT 1 FROM blocks WHERE id = ?", (row[0],)) is not None:
                return False
            conn.execute("DELETE FROM tombstones WHERE id = ?", (tomb_id,))
            return True

        return self.db.write(write)

    # -- blocks: read --------------------------------------------------------

    def get(self, block_id: str) -> Block:
        row = self.db.read(
            lambda c: c.one(f"SELECT {_COLS}, erased FROM blocks WHERE id = ?", (block_id,))
        )
        if row is None:
            if self.tombstone_for(block_id) is not None:
                raise ErasedError(f"block {block_id[:12]}… was erased; only its tombstone remains")
            raise NotFoundError(f"no block with id {block_id[:12]}…")
        if row[-1]:
            raise ErasedError(f"block {block_id[:12]}… was erased; only its tombstone remains")
        return _block(row)

    def has(self, block_id: str) -> bool:
        return (
            self.db.read(lambda c: c.one("SELECT 1 FROM blocks WHERE id = ?", (block_id,)))
            is not None
        )

    def resolve_prefix(self, prefix: str) -> str:
        """Expand an id prefix (at least 6 hex chars) to a full id."""
        prefix = prefix.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{6,64}", prefix):
            raise InputError("a block id is 6 to 64 lowercase hex characters")
        if len(prefix) == 64:
            return prefix
        hi = prefix + "g"  # 'g' sorts after every hex digit
        rows = self.db.read(
            lambda c: c.all(
                "SELECT id FROM blocks WHERE id >= ? AND id < ? UNION "
                "SELECT erases FROM tombstones WHERE erases >= ? AND erases < ? LIMIT 3",
                (prefix, hi, prefix, hi),
            )
        )
        ids = sorted({r[0] for r in rows})
        if not ids:
            raise NotFoundError(f"no block with id starting {prefix}")
        if len(ids) > 1:
            raise InputError(f"id prefix {prefix} is ambiguous; give more characters")
        return str(ids[0])

    def tombstone_for(self, block_id: str) -> Tombstone | None:
        row = self.db.read(
            lambda c: c.one(
                "SELECT id, erases, author, created, reason, sig FROM tombstones"
                " WHERE erases = ? ORDER BY created, id LIMIT 1",
                (block_id,),
            )
        )
        return _tombstone(row) if row else None

    def list_blocks(
        self, flt: BlockFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        limit = _check_limit(limit)
        where, params = _where(flt or BlockFilter())
        if cursor:
            created, seq = _parse_cursor(cursor)
            where.append("(b.created < ? OR (b.created = ? AND b.seq < ?))")
            params += [created, created, seq]
        sql = (
            f"SELECT {_prefixed()} FROM blocks b WHERE {' AND '.join(where)}"
            " ORDER BY b.created DESC, b.seq DESC LIMIT ?"
        )
        rows = self.db.read(lambda c: c.all(sql, [*params, limit + 1]))
        items = [_block(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = f"{last[7]}.{last[10]}"
        return Page(items=items, next_cursor=next_cursor)

    def search(
        self, query: str, flt: BlockFilter | None = None, *, limit: int = 10
    ) -> list[SearchHit]:
        limit = _check_limit(limit)
        words = [w.lower() for w in _WORD.findall(query)][:32]
        if not words:
            raise InputError("the search query has no words in it")
        where, params = _where(flt or BlockFilter())
        if self.db.dialect == "sqlite":
            match = " OR ".join(f'"{w}"*' if len(w) >= 4 else f'"{w}"' for w in words)
            if not params:  # no filter: rank inside the FTS index, then read only the winners
                sql = (
                    f"SELECT {_prefixed()}, f.rank FROM (SELECT rowid, bm25(blocks_fts, 4.0, 1.0, 2.0)"
                    " AS rank FROM blocks_fts WHERE blocks_fts MATCH ? ORDER BY rank LIMIT ?) f"
                    " JOIN blocks b ON b.seq = f.rowid WHERE b.erased = 0 ORDER BY f.rank"
                )
                rows = self.db.read(lambda c: c.all(sql, [match, limit]))
                return [SearchHit(_block(r[:11]), -float(r[11])) for r in rows]
            sql = (
                f"SELECT {_prefixed()}, bm25(blocks_fts, 4.0, 1.0, 2.0) AS rank FROM blocks_fts"
                f" JOIN blocks b ON b.seq = blocks_fts.rowid"
                f" WHERE blocks_fts MATCH ? AND {' AND '.join(where)} ORDER BY rank LIMIT ?"
            )
            rows = self.db.read(lambda c: c.all(sql, [match, *params, limit]))
            return [SearchHit(_block(r[:11]), -float(r[11])) for r in rows]
        tsq = " | ".join(f"{w}:*" if len(w) >= 4 else w for w in words)
        sql = (
            f"SELECT {_prefixed()}, ts_rank(b.tsv, q) AS rank FROM blocks b,"
            " to_tsquery('simple', ?) q"
            f" WHERE b.tsv @@ q AND {' AND '.join(where)} ORDER BY rank DESC, b.seq DESC LIMIT ?"
        )
        rows = self.db.read(lambda c: c.all(sql, [tsq, *params, limit]))
        return [SearchHit(_block(r[:11]), float(r[11])) for r in rows]

    def successors(self, block_ids: Sequence[str], *, max_depth: int = 16) -> dict[str, str]:
        """Map each superseded id to the newest live block that (transitively) supersedes it."""
        result: dict[str, str] = {}
        frontier: dict[str, list[str]] = {i: [i] for i in dict.fromkeys(block_ids)}  # id -> origins
        for _ in range(max_depth):
            if not frontier:
                break
            rows = self.db.read(
                functools.partial(
                    _chunked_list,
                    "SELECT r.target, r.block_id, r.created FROM block_refs r"
                    " JOIN blocks b ON b.id = r.block_id"
                    " WHERE r.rel = 'supersedes' AND b.erased = 0 AND r.target IN ({})",
                    list(frontier),
                )
            )
            newest: dict[str, tuple[int, str]] = {}
            for target, successor, created in rows:
                best = newest.get(target)
                if best is None or (int(created), successor) > best:
                    newest[target] = (int(created), successor)
            next_frontier: dict[str, list[str]] = {}
            for target, (_created, successor) in newest.items():
                for origin in frontier[target]:
                    result[origin] = successor
                    next_frontier.setdefault(successor, []).append(origin)
            frontier = next_frontier
        return result

    def find_same_body(self, body: str, source: str = "") -> str | None:
        """Id of a live block with exactly this body (and source, if given)."""
        h = body_hash(body)
        sql = "SELECT id FROM blocks WHERE body_hash = ? AND erased = 0"
        params: list[Any] = [h]
        if source:
            sql += " AND source = ?"
            params.append(source)
        row = self.db.read(lambda c: c.one(sql + " LIMIT 1", params))
        return str(row[0]) if row else None

    def iter_blocks(self, batch: int = 1000) -> Iterator[Block]:
        """Every live block in storage order, read in batches (for export and verify)."""
        last = 0
        while True:
            rows = self.db.read(
                functools.partial(
                    _all,
                    f"SELECT {_COLS} FROM blocks WHERE seq > ? AND erased = 0 ORDER BY seq LIMIT ?",
                    (last, batch),
                )
            )
            if not rows:
                return
            for r in rows:
                yield _block(r)
            last = int(rows[-1][10])

    def iter_tombstones(self) -> Iterator[Tombstone]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT id, erases, author, created, reason, sig FROM tombstones ORDER BY created, id"
            )
        )
        for r in rows:
            yield _tombstone(r)

    def stats(self) -> StoreStats:
        def query(c: Conn) -> StoreStats:
            by_kind = {
                r[0]: int(r[1])
                for r in c.all("SELECT kind, COUNT(*) FROM blocks WHERE erased = 0 GROUP BY kind")
            }
            by_scope = {
                r[0]: int(r[1])
                for r in c.all("SELECT scope, COUNT(*) FROM blocks WHERE erased = 0 GROUP BY scope")
            }
            erased = c.one("SELECT COUNT(*) FROM blocks WHERE erased = 1")
            tombs = c.one("SELECT COUNT(*) FROM tombstones")
            devices = c.one("SELECT COUNT(*) FROM devices")
            return StoreStats(
                blocks=sum(by_kind.values()),
                erased=int(erased[0]) if erased else 0,
                tombstones=int(tombs[0]) if tombs else 0,
                by_kind=by_kind,
                by_scope=by_scope,
                devices=int(devices[0]) if devices else 0,
                schema_version=0,
            )

        stats = self.db.read(query)
        return StoreStats(**{**_asdict(stats), "schema_version": current_version(self.db)})
