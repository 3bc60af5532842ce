"""Who may put what into this device's store: the admission rules sync applies.

A record arriving from a peer was already parsed and its signature verified
against the author's key. It is then admitted only if:

* its author is a device of this mind (known to the devices table);
* the author is not revoked, unless the ledger committed the record before
  the revocation (a lost device's key cannot add anything new);
* a private block belongs to this device's person (private memory never
  leaves its person's devices);
* a tombstone comes from the erased block's author, a device of the same
  person as that author, or an authority (members cannot erase each other).
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
        if not author.active and not committed(item.id):
            return Verdict(False, "author_revoked")
        if isinstance(item, Block):
            if item.scope == "private" and author.person != my_person:
                return Verdict(False, "private_block_of_another_person")
            return Verdict(True)
        erased_author = _author_of(store, item.erases)
        if erased_author is None or erased_author == item.author or author.role == "authority":
            return Verdict(True)
        target = known.get(erased_author)
        if target is not None and target.person == author.person:
            return Verdict(True)
        return Verdict(False, "tombstone_not_allowed")

    return admit


def _author_of(store: BlockStore, block_id: str) -> str | None:
    row = store.db.read(lambda c: c.one("SELECT author FROM blocks WHERE id = ?", (block_id,)))
    return str(row[0]) if row else None
