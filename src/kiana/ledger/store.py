"""Where a ledger keeps its blocks and pending records.

``SqlLedgerStore`` writes to the tables of migration 7 (``ledger_blocks``,
``ledger_pending``) through ``Database.write``; ``MemoryLedgerStore`` keeps them in
dicts (tests, tools). Blocks are stored as canonical JSON and parsed again on load;
``Ledger.open`` verifies them all from genesis, so a tampered row is simply not taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kiana.ledger.chain import LedgerBlock, block_json, parse_block
from kiana.ledger.records import Record, parse_record, record_text
from kiana.store.db import Conn, Database


class LedgerStore(Protocol):
    def load_blocks(self) -> list[LedgerBlock]:
        """Every stored block (not the genesis block), lowest height first."""
        ...

    def put_block(self, block: LedgerBlock, total_difficulty: int) -> None:
        """Store a verified block; storing one twice is a no-op."""
        ...

    def load_pending(self) -> list[Record]:
        """The pending pool, oldest first."""
        ...

    def update_pending(self, add: Sequence[Record], remove: Sequence[str]) -> None:
        """Add records (no-op for known ones) and remove record ids from the pool."""
        ...


class MemoryLedgerStore:
    def __init__(self) -> None:
        self.blocks: dict[str, tuple[LedgerBlock, int]] = {}
        self.pending: dict[str, Record] = {}

    def load_blocks(self) -> list[LedgerBlock]:
        return sorted((b for b, _ in self.blocks.values()), key=lambda b: (b.height, b.hash))

    def put_block(self, block: LedgerBlock, total_difficulty: int) -> None:
        self.blocks.setdefault(block.hash, (block, total_difficulty))

    def load_pending(self) -> list[Record]:
        return list(self.pending.values())

    def update_pending(self, add: Sequence[Record], remove: Sequence[str]) -> None:
        for r in add:
            self.pending.setdefault(r.id, r)
        for rid in remove:
            self.pending.pop(rid, None)


class SqlLedgerStore:
    """The ledger's tables in the node's database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load_blocks(self) -> list[LedgerBlock]:
        rows = self.db.read(
            lambda conn: conn.all("SELECT data FROM ledger_blocks ORDER BY height, hash")
        )
        return [parse_block(str(row[0])) for row in rows]

    def put_block(self, block: LedgerBlock, total_difficulty: int) -> None:
        def write(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO ledger_blocks (hash, height, parent, data, total_difficulty)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
                (block.hash, block.height, block.parent, block_json(block), total_difficulty),
            )

        self.db.write(write)

    def load_pending(self) -> list[Record]:
        rows = self.db.read(lambda conn: conn.all("SELECT data FROM ledger_pending ORDER BY seq"))
        return [parse_record(str(row[0])) for row in rows]

    def update_pending(self, add: Sequence[Record], remove: Sequence[str]) -> None:
        def write(conn: Conn) -> None:
            row = conn.one("SELECT MAX(seq) FROM ledger_pending")
            seq = int(row[0]) if row and row[0] is not None else 0
            conn.executemany(
                "INSERT INTO ledger_pending (record_id, seq, data) VALUES (?, ?, ?)"
                " ON CONFLICT (record_id) DO NOTHING",
                [(r.id, seq + i, record_text(r)) for i, r in enumerate(add, 1)],
            )
            conn.executemany(
                "DELETE FROM ledger_pending WHERE record_id = ?", [(rid,) for rid in remove]
            )

        self.db.write(write)


__all__ = ["LedgerStore", "MemoryLedgerStore", "SqlLedgerStore"]
