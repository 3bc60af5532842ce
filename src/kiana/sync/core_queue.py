"""Delivered ``NodeCore`` messages waiting for the store thread, block sync first (sans-I/O).

The mesh reads a link's frames, stores and acknowledges each message (the messenger),
and queues it here; one worker hands the messages to ``NodeCore.handle`` one at a time.
Which one comes next:

* each channel's messages in the order they arrived (the ledger, the shared state and
  block sync each see their peers' messages in order, as before);
* block sync (``SYNC_CHANNEL``) before the other channels: a device catching up gets
  the ledger's catch-up (~40 messages of up to 480 KB, each verified) at the same
  moment as the first sync messages, and those waited behind it for ~0.6 s;
* but never more than ``SYNC_RUN`` sync messages in a row while another channel waits
  (then its oldest message goes), so the ledger and the shared state still move during
  a long bulk transfer; between those channels, arrival order.

Nothing a channel needs depends on another channel's messages arriving first: senders
interleave channels as their own timers and answers fall, so this was never promised.
(A record from a revoked author is admitted only if the ledger committed it; if the
block comes before that ledger block, it is refused now and asked for again at the
next reconciliation.)
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

from kiana.sync.engine import SYNC_CHANNEL

SYNC_RUN = 8  # sync messages in a row before a waiting message of another channel goes
MAX_QUEUED_BYTES = 32 << 20  # the reader waits (stops reading frames) above this


@dataclass(frozen=True, slots=True)
class Queued:
    """One delivered message, stored by the messenger, waiting to be handled."""

    peer: str
    channel: str
    body: bytes
    msg_id: str
    order: int = 0  # arrival order (set by ``CoreQueue.push``)


@dataclass(slots=True)
class CoreQueue:
    """Per-channel FIFO queues; ``pop`` picks block sync first (see the module doc)."""

    first: str = SYNC_CHANNEL
    sync_run: int = SYNC_RUN
    max_bytes: int = MAX_QUEUED_BYTES
    queued_bytes: int = 0
    _queues: dict[str, deque[Queued]] = field(default_factory=dict)
    _pending: Counter[str] = field(default_factory=Counter)  # per peer: queued or in hand
    _run: int = 0  # sync messages popped in a row while others waited
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, peer: str, channel: str, body: bytes, msg_id: str) -> Queued:
        item = Queued(peer, channel, body, msg_id, next(self._order))
        self._queues.setdefault(channel, deque()).append(item)
        self.queued_bytes += len(body)
        self._pending[peer] += 1
        return item

    def pop(self) -> Queued | None:
        """The next message to handle, or None; call ``done`` once it is handled."""
        first = self._queues.get(self.first)
        others = [q for ch, q in self._queues.items() if ch != self.first and q]
        if first and (not others or self._run < self.sync_run):
            self._run = self._run + 1 if others else 0
            item = first.popleft()
        elif others:
            self._run = 0
            item = min(others, key=lambda q: q[0].order).popleft()
        else:
            return None
        self.queued_bytes -= len(item.body)
        return item

    def done(self, item: Queued) -> None:
        """``item`` (from ``pop``) was handled."""
        self._pending[item.peer] -= 1
        if self._pending[item.peer] <= 0:
            del self._pending[item.peer]

    def pending(self, peer: str) -> int:
        """Messages from ``peer`` queued or being handled."""
        return self._pending.get(peer, 0)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def full(self) -> bool:
        return self.queued_bytes >= self.max_bytes


__all__ = ["MAX_QUEUED_BYTES", "SYNC_RUN", "CoreQueue", "Queued"]
