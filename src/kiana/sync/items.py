"""What a device has, as sync sees it: live block ids and tombstone ids, with their scope.

Reconciliation runs over *items*: ``(created ms, id)``. A live block is an item;
an erased block is not (its content is gone) but its tombstone is, so erasures
travel like anything else and a lagging peer learns of them.

A tombstone has the scope of the block it erases, as far as this device knows it:
the erased block's row stays (``erased = 1``, scope kept). A tombstone for a block
this device never held is treated as private (only the devices of this device's
person get it from here): it names the erased id, and the block may have been
private. Devices that held the block classify it exactly and pass a shared one on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiana.blocks import Block, Tombstone
from kiana.store import BlockStore
from kiana.store.db import Conn
from kiana.store.rows import COLS, chunked_list
from kiana.store.rows import block as block_from_row
from kiana.store.rows import tombstone as tombstone_from_row


@dataclass(frozen=True, slots=True)
class SyncItem:
    created: int
    id: str  # 64 hex
    private: bool
    tombstone: bool


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the last scan of the store ended: block ``seq`` and tombstone ``stored`` time."""

    seq: int = 0
    tomb_stored: int = -1


def scan(store: BlockStore, cursor: Cursor) -> tuple[list[SyncItem], Cursor]:
    """Items stored after ``cursor`` (all of them from ``Cursor()``), and the new cursor."""

    def query(c: Conn) -> tuple[list[SyncItem], Cursor]:
        # The cursor only moves to the last row this very query returned: a separate
        # MAX(seq) could count rows committed in between and skip them for ever.
        rows = c.all(
            "SELECT seq, created, id, scope, erased FROM blocks WHERE seq > ? ORDER BY seq",
            (cursor.seq,),
        )
        # ">=": tombstones stored in the same millisecond as the last scan are read again;
        # the caller's sets ignore repeats.
        tombs = c.all(
            "SELECT t.stored, t.created, t.id, COALESCE(b.scope, 'private') FROM tombstones t"
            " LEFT JOIN blocks b ON b.id = t.erases WHERE t.stored >= ? ORDER BY t.stored",
            (cursor.tomb_stored,),
        )
        items = [SyncItem(int(r[1]), str(r[2]), r[3] == "private", False) for r in rows if not r[4]]
        items += [SyncItem(int(r[1]), str(r[2]), r[3] == "private", True) for r in tombs]
        seq = int(rows[-1][0]) if rows else cursor.seq
        stored = max([int(r[0]) for r in tombs], default=cursor.tomb_stored)
        return items, Cursor(max(seq, cursor.seq), stored)

    return store.db.read(query)


def erased_ids(store: BlockStore) -> set[str]:
    """Ids of blocks whose content was erased here (never fetched again)."""
    rows = store.db.read(lambda c: c.all("SELECT erases FROM tombstones"))
    return {str(r[0]) for r in rows}


def fetch_records(store: BlockStore, ids: Sequence[str]) -> list[Block | Tombstone]:
    """The live blocks and tombstones with these ids (unknown or erased ids are skipped)."""
    if not ids:
        return []

    def query(c: Conn) -> list[Block | Tombstone]:
        out: list[Block | Tombstone] = []
        rows = chunked_list(
            f"SELECT {COLS} FROM blocks WHERE erased = 0 AND id IN ({{}})", list(ids), c
        )
        out.extend(block_from_row(r) for r in rows)
        tombs = chunked_list(
            "SELECT id, erases, author, created, reason, sig FROM tombstones WHERE id IN ({})",
            list(ids),
            c,
        )
        out.extend(tombstone_from_row(r) for r in tombs)
        return out

    return store.db.read(functools.partial(query))


def record_of(item: Block | Tombstone) -> dict[str, Any]:
    kind = "tombstone" if isinstance(item, Tombstone) else "block"
    return {"type": kind, "record": item.to_dict()}
