"""Durable state of end-to-end messaging: outbox, inbox, dedup records, channel counters.

``MessageStore`` is what ``Messenger`` needs; ``MemoryMessageStore`` keeps it in
dicts (tests, ephemeral nodes) and ``SqlMessageStore`` (``message_store_sql.py``)
in the ``mesh_*`` tables of migration 5, on SQLite and PostgreSQL. Every method is one transaction.

Inbox rows have a state in the ``consumed`` column: ``0`` delivered and waiting
for the application, ``-1`` held (an ordered message whose predecessors have not
arrived). Consuming a message deletes its row; its ``mesh_seen`` record stays
until the message's expiry and keeps a late duplicate from being delivered again.

Ordered channels: the sender numbers messages per (recipient, channel) from 1
(``mesh_channels`` direction ``out``) and never gives a message an earlier
expiry than a queued predecessor; the receiver keeps the next expected number
per (sender, channel) (direction ``in``). A held message is released once its
own expiry passes: by then every missing predecessor has expired too, so the
sender has given up on it and it can never be delivered (a late copy is
rejected as expired).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from kiana.mesh.envelope import Envelope

INBOX_READY = 0
INBOX_HELD = -1

DeliverStatus = Literal["delivered", "held", "duplicate", "stale", "conflict"]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    msg_id: str
    peer: str
    channel: str
    seq: int  # 0 for unordered messages
    created: int
    expires: int
    attempts: int
    next_try: int
    envelope: bytes


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message handed to the application; ``received`` is when it became deliverable."""

    msg_id: str
    sender: str
    channel: str
    seq: int
    body: bytes
    created: int
    received: int


@dataclass(frozen=True, slots=True)
class DeliverResult:
    """``delivered``: the message (and released successors) now in the inbox, in order."""

    status: DeliverStatus
    delivered: tuple[Delivered, ...] = ()


Sealer = Callable[[int, int], bytes]  # (seq, expires) -> envelope


class MessageStore(Protocol):
    def add_outgoing(
        self,
        msg_id: str,
        peer: str,
        channel: str,
        *,
        ordered: bool,
        created: int,
        expires: int,
        seal: Sealer,
    ) -> OutboxEntry:
        """Allocate the sequence number, seal with it and queue, atomically."""
        ...

    def due(self, peers: Collection[str], now: int, limit: int) -> list[OutboxEntry]: ...
    def record_attempts(self, tries: Sequence[tuple[str, int]]) -> None:
        """``(msg_id, next_try)`` pairs: one more attempt each."""
        ...

    def reschedule(self, peer: str, now: int) -> None: ...
    def remove_acked(self, peer: str, msg_ids: Sequence[str]) -> list[str]: ...
    def expire_outgoing(self, now: int) -> list[tuple[str, str]]:
        """Drop entries with ``expires <= now``; return ``(msg_id, peer)``."""
        ...

    def next_outgoing(self, peers: Collection[str]) -> int | None:
        """Earliest retry for ``peers`` or expiry of any entry."""
        ...

    def outbox(self, peer: str | None = None) -> list[OutboxEntry]: ...
    def deliver(self, env: Envelope, now: int) -> DeliverResult:
        """Store a received message and its dedup record in one transaction."""
        ...

    def release_gaps(self, now: int) -> list[Delivered]: ...
    def next_release(self) -> int | None: ...
    def pending_inbox(self, limit: int) -> list[Delivered]: ...
    def held_count(self) -> int: ...
    def consume(self, msg_id: str) -> None: ...
    def prune_seen(self, now: int) -> int: ...


def _min(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


# -- memory -------------------------------------------------------------------


@dataclass(slots=True)
class _InboxRow:
    item: Delivered
    state: int
    expires: int


class MemoryMessageStore:
    """All state in dicts; lost when the process ends."""

    def __init__(self) -> None:
        self._outbox: dict[str, OutboxEntry] = {}
        self._inbox: dict[str, _InboxRow] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._counters: dict[tuple[str, str, str], int] = {}

    def add_outgoing(
        self,
        msg_id: str,
        peer: str,
        channel: str,
        *,
        ordered: bool,
        created: int,
        expires: int,
        seal: Sealer,
    ) -> OutboxEntry:
        seq = 0
        if ordered:
            seq = self._counters.get((peer, channel, "out"), 1)
            for e in self._outbox.values():
                if e.peer == peer and e.channel == channel and e.seq > 0:
                    expires = max(expires, e.expires)
        entry = OutboxEntry(msg_id, peer, channel, seq, created, expires, 0, created, b"")
        entry = replace(entry, envelope=seal(seq, expires))
        self._outbox[msg_id] = entry
        if ordered:
            self._counters[(peer, channel, "out")] = seq + 1
        return entry

    def due(self, peers: Collection[str], now: int, limit: int) -> list[OutboxEntry]:
        rows = [
            e
            for e in self._outbox.values()
            if e.peer in peers and e.next_try <= now and e.expires > now
        ]
        rows.sort(key=lambda e: (e.next_try, e.created, e.seq, e.msg_id))
        return rows[:limit]

    def record_attempts(self, tries: Sequence[tuple[str, int]]) -> None:
        for msg_id, next_try in tries:
            e = self._outbox.get(msg_id)
            if e is not None:
                self._outbox[msg_id] = replace(e, attempts=e.attempts + 1, next_try=next_try)

    def reschedule(self, peer: str, now: int) -> None:
        for msg_id, e in list(self._outbox.items()):
            if e.peer == peer and e.next_try > now:
                self._outbox[msg_id] = replace(e, next_try=now)

    def remove_acked(self, peer: str, msg_ids: Sequence[str]) -> list[str]:
        gone = [m for m in dict.fromkeys(msg_ids) if m in self._outbox]
        gone = [m for m in gone if self._outbox[m].peer == peer]
        for m in gone:
            del self._outbox[m]
        return gone

    def expire_outgoing(self, now: int) -> list[tuple[str, str]]:
        gone = sorted(
            (e for e in self._outbox.values() if e.expires <= now),
            key=lambda e: (e.expires, e.msg_id),
        )
        for e in gone:
            del self._outbox[e.msg_id]
        return [(e.msg_id, e.peer) for e in gone]

    def next_outgoing(self, peers: Collection[str]) -> int | None:
        retry = [e.next_try for e in self._outbox.values() if e.peer in peers]
        expiry = [e.expires for e in self._outbox.values()]
        return _min(min(retry, default=None), min(expiry, default=None))

    def outbox(self, peer: str | None = None) -> list[OutboxEntry]:
        rows = [e for e in self._outbox.values() if peer is None or e.peer == peer]
        return sorted(rows, key=lambda e: (e.created, e.seq, e.msg_id))

    def deliver(self, env: Envelope, now: int) -> DeliverResult:
        if (env.sender, env.msg_id) in self._seen:
            return DeliverResult("duplicate")
        key = (env.sender, env.channel, "in")
        expected = self._counters.get(key, 1)
        if env.ordered and env.seq < expected:
            return DeliverResult("stale")
        if env.msg_id in self._inbox:
            return DeliverResult("conflict")
        self._seen[(env.sender, env.msg_id)] = env.expires
        item = Delivered(env.msg_id, env.sender, env.channel, env.seq, env.body, env.created, now)
        held = env.ordered and env.seq > expected
        self._inbox[env.msg_id] = _InboxRow(item, INBOX_HELD if held else INBOX_READY, env.expires)
        if held:
            return DeliverResult("held")
        if not env.ordered:
            return DeliverResult("delivered", (item,))
        released = self._promote(env.sender, env.channel, env.seq + 1, now)
        return DeliverResult("delivered", (item, *released))

    def _promote(self, sender: str, channel: str, expected: int, now: int) -> list[Delivered]:
        """Mark held rows from ``expected`` on without a gap ready; store the new counter."""
        held = {
            r.item.seq: r
            for r in self._inbox.values()
            if r.state == INBOX_HELD and r.item.sender == sender and r.item.channel == channel
        }
        out: list[Delivered] = []
        while expected in held:
            row = held.pop(expected)
            row.state = INBOX_READY
            row.item = replace(row.item, received=now)
            out.append(row.item)
            expected += 1
        self._counters[(sender, channel, "in")] = expected
        return out

    def _held_heads(self) -> dict[tuple[str, str], _InboxRow]:
        heads: dict[tuple[str, str], _InboxRow] = {}
        for r in self._inbox.values():
            if r.state != INBOX_HELD:
                continue
            k = (r.item.sender, r.item.channel)
            if k not in heads or r.item.seq < heads[k].item.seq:
                heads[k] = r
        return heads

    def release_gaps(self, now: int) -> list[Delivered]:
        out: list[Delivered] = []
        while True:
            due = sorted((k, r) for k, r in self._held_heads().items() if r.expires <= now)
            if not due:
                return out
            for (sender, channel), head in due:
                out.extend(self._promote(sender, channel, head.item.seq, now))

    def next_release(self) -> int | None:
        return min((r.expires for r in self._held_heads().values()), default=None)

    def pending_inbox(self, limit: int) -> list[Delivered]:
        rows = [r.item for r in self._inbox.values() if r.state == INBOX_READY]
        rows.sort(key=lambda d: (d.received, d.sender, d.channel, d.seq, d.msg_id))
        return rows[:limit]

    def held_count(self) -> int:
        return sum(1 for r in self._inbox.values() if r.state == INBOX_HELD)

    def consume(self, msg_id: str) -> None:
        row = self._inbox.get(msg_id)
        if row is not None and row.state == INBOX_READY:
            del self._inbox[msg_id]

    def prune_seen(self, now: int) -> int:
        held = {(r.item.sender, m) for m, r in self._inbox.items() if r.state == INBOX_HELD}
        gone = [k for k, exp in self._seen.items() if exp <= now and k not in held]
        for k in gone:
            del self._seen[k]
        return len(gone)


# -- SQL ----------------------------------------------------------------------
