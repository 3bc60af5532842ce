"""Who may put what into this device's store: the admission rules sync applies.

A record arriving from a peer was already parsed and its signature verified
against the author's key. It is then admitted only if:

* its author is a device of this mind (known to the devices table);
* the author is not revoked, unless the ledger committed the record before
  the revocation (a lost device's key cannot add anything new);
* a private block belongs to this device's person (private memory never
  leaves its person's devices);
* a tombstone comes from the erased block's author, a device of the same
  person as that author, or an authority (members cannot erase each other). A
  tombstone for a block this device has never seen is kept; if the block arrives
  later and the eraser was not allowed, the engine drops the tombstone and keeps
  the block (so one forged erasure cannot make devices disagree for ever).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kiana.blocks import Block, Tombstone
from kiana.store import BlockStore, Device
from kiana.sync.engine import Admission, Verdict


def admission(
    store: BlockStore,
    my_person: str,
    *,
    committed: Callable[[str], bool] = lambda _id: False,
    committed_private: Callable[[Block], bool] = lambda _block: False,
) -> Admission:
    cache: dict[str, Device] = {}
    read_at = [-1.0]

    def devices() -> dict[str, Device]:
        # The device list changes rarely; a bulk sync checks thousands of records a second.
        now = time.monotonic()
        if now - read_at[0] > 1.0:
            cache.clear()
            cache.update({d.device_id: d for d in store.devices()})
            read_at[0] = now
        return cache

    def admit(item: Block | Tombstone, peer: str) -> Verdict:
        known = devices()
        author = known.get(item.author)
        if author is None:
            return Verdict(False, "unknown_author")
        if (
            not author.active
            and not committed(item.id)
            # a private block is committed as a blinded token (kiana.ledger.records)
            and not (isinstance(item, Block) and committed_private(item))
        ):
            return Verdict(False, "author_revoked")
        if isinstance(item, Block):
            if item.scope == "private" and author.person != my_person:
                return Verdict(False, "private_block_of_another_person")
            return Verdict(True)
        erased_author = _author_of(store, item.erases)
        if erased_author is None:
            # The block is unknown here: keep the tombstone (the block may never come, if
            # it was erased before this device synced). Should the block arrive later, the
            # engine checks ``may_erase`` with its author and drops a tombstone not allowed.
            return Verdict(True)
        if allowed(known, item.author, erased_author):
            return Verdict(True)
        return Verdict(False, "tombstone_not_allowed")

    return admit


def allowed(known: dict[str, Device], tomb_author: str, block_author: str) -> bool:
    """May ``tomb_author`` erase a block written by ``block_author``?"""
    if tomb_author == block_author:
        return True
    eraser = known.get(tomb_author)
    if eraser is None:
        return False
    if eraser.role == "authority":
        return True
    target = known.get(block_author)
    return target is not None and target.person == eraser.person


def may_erase(store: BlockStore) -> Callable[[str, str], bool]:
    """``allowed`` over the store's current devices, for the sync engine."""

    def check(tomb_author: str, block_author: str) -> bool:
        return allowed({d.device_id: d for d in store.devices()}, tomb_author, block_author)

    return check


def _author_of(store: BlockStore, block_id: str) -> str | None:
    row = store.db.read(lambda c: c.one("SELECT author FROM blocks WHERE id = ?", (block_id,)))
    return str(row[0]) if row else None
