"""Whose ops a replica takes: the member directory and the rules an op must pass.

Every op arriving from a peer that is new here (not applied, not held) is checked
before it is applied or held, so nothing unchecked is ever stored or forwarded:

* ``unknown_replica``: its replica is not a device of this mind (yet); refused. If
  the device is admitted later, the ops are asked for again (``StateGossip``);
* ``replica_revoked``: its replica is revoked here and the op came from that very
  device; refused. The same op forwarded by a current member is taken (next point);
* ``bad_signature``: the signature is not the replica's, so the op was forged under
  another device's id or changed on the way; refused.

Revoked devices. Ops a revoked device signed are still verified with its key (the
directory keeps it), and taken when a current member forwards them; they are never
taken from the revoked device itself. Why: devices learn of a revocation at
different times. A device B that has not learned it yet may take new ops from the
revoked device R; a device A that knew earlier refused the same ops. If A refused
them for ever, A and B would disagree for ever (B cannot unapply an op, and no
common cut-off seq exists: a revocation record names none). With this rule the set
of R's ops in the mind is closed under gossip: an op any current member took reaches
every other member, which takes it because a member forwards it, and an op no member
took is nowhere. So every device ends with the same ops and the same state. The price
is a window: until every device knows of the revocation, R's key can still add ops
through one that does not (a member link with R is refused once the revocation is
known, so R cannot do so directly). An op under R's id can do no more than one under
any member's id: the shared state has no per-device write rights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from kiana.errors import KianaError, NotMemberError, UnknownAuthorError
from kiana.sync.crdt_wire import Op, verify_op

if TYPE_CHECKING:
    from kiana.store import BlockStore

REFRESH_S = 1.0  # the device list changes rarely; re-read it at most this often
MISS_REFRESH_S = 0.1  # ... or this often when an unknown replica turns up


@dataclass(frozen=True, slots=True)
class ReplicaKey:
    """A member device as the CRDT sees it: its Ed25519 key and whether it is active."""

    sign_key: bytes
    active: bool = True


# replica (device) id -> its key, or None if it is not a device of this mind
Directory: TypeAlias = Callable[[str], ReplicaKey | None]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An op that was not taken, and why (``code``: ``unknown_replica``,
    ``replica_revoked`` or ``bad_signature``)."""

    op: str  # replica:seq
    code: str
    message: str


def check_op(op: Op, directory: Directory, sender: str | None) -> None:
    """Raise (a ``KianaError`` whose ``code`` is the rule) unless ``op`` may be taken from
    ``sender`` (None: not from the replica itself, e.g. a local import)."""
    entry = directory(op.replica)
    if entry is None:
        err: KianaError = UnknownAuthorError(f"op {op.label}: {op.replica} is not a member")
        err.code = "unknown_replica"
        raise err
    if not entry.active and sender == op.replica:
        err = NotMemberError(f"op {op.label}: device {op.replica} is revoked")
        err.code = "replica_revoked"
        raise err
    verify_op(op, entry.sign_key)


def store_directory(store: BlockStore, *, clock: Callable[[], float] = time.monotonic) -> Directory:
    """The ``devices`` table of ``store`` (revoked devices included, marked), cached."""
    cache: dict[str, ReplicaKey] = {}
    read_at = [-1e18]

    def refresh() -> None:
        cache.clear()
        cache.update({d.device_id: ReplicaKey(d.sign_key, d.active) for d in store.devices()})
        read_at[0] = clock()

    def lookup(replica: str) -> ReplicaKey | None:
        if clock() - read_at[0] > REFRESH_S:
            refresh()
        entry = cache.get(replica)
        if entry is None and clock() - read_at[0] > MISS_REFRESH_S:
            refresh()
            entry = cache.get(replica)
        return entry

    return lookup


__all__ = ["Directory", "Refusal", "ReplicaKey", "check_op", "store_directory"]
