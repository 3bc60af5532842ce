"""What the mind keeps in its shared (CRDT) state, and how: one place for the names.

* ``pins``: an observed-remove set of block ids the people of the mind pinned
  (add-wins: a pin and a concurrent unpin leave the block pinned).
"""

from __future__ import annotations

import re

from kiana.errors import InputError
from kiana.sync.crdt import SharedState

PINS = "pins"
_BLOCK_ID = re.compile(r"^[0-9a-f]{64}$")


def set_pin(state: SharedState, block_id: str, pinned: bool) -> list[str]:
    if not _BLOCK_ID.match(block_id):
        raise InputError("a pin needs a full 64-hex block id")
    if pinned:
        state.add(PINS, block_id)
    else:
        state.remove(PINS, block_id)
    return sorted(state.members(PINS))
