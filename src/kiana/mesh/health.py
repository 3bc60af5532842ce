"""Peer health: heartbeats, round-trip time and a per-peer state machine; reconnect backoff.

Sans-I/O: callers pass the time in milliseconds and ask what to do next.

::

    connecting ──link up──▶ up ──2 missed heartbeats──▶ suspect ──5 missed──▶ down
        ▲                    ▲                             │                   │
        │                    └────── any frame heard ──────┘                   │
        └──────────── reconnect after backoff (0.25 s × 2ⁿ, cap 30 s) ◀────────┘
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class PeerState(StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    rng: random.Random
    base_ms: int = 250
    factor: float = 2.0
    cap_ms: int = 30_000
    attempt: int = 0

    def next_delay(self) -> int:
        ceiling = min(self.cap_ms, self.base_ms * self.factor**self.attempt)
        self.attempt += 1
        # Full jitter, but never less than a tenth of the base: no hot loops.
        return max(self.base_ms // 10, int(self.rng.uniform(0, ceiling)))

    def reset(self) -> None:
        self.attempt = 0


class PeerHealth:
    """Liveness of one link, judged from heartbeats the link sends and frames it hears."""

    def __init__(self, *, heartbeat_ms: int, suspect_after: int = 2, down_after: int = 5) -> None:
        if heartbeat_ms <= 0:
            raise ValueError("heartbeat_ms must be positive")
        self.heartbeat_ms = heartbeat_ms
        self.suspect_after = suspect_after
        self.down_after = down_after
        self.state = PeerState.CONNECTING
        self.rtt_ms: float | None = None
        self.last_heard: int | None = None
        self._next_ping: int | None = None

    def on_up(self, now: int) -> None:
        self.state = PeerState.UP
        self.last_heard = now
        self._next_ping = now

    def on_frame(self, now: int) -> PeerState | None:
        """Any authenticated frame proves the peer alive. Returns the new state if it changed."""
        self.last_heard = now
        if self.state is PeerState.SUSPECT:
            self.state = PeerState.UP
            return self.state
        return None

    def on_pong(self, sent_at: int, now: int) -> None:
        sample = float(max(0, now - sent_at))
        # EWMA as in TCP's SRTT (RFC 6298, alpha = 1/8); the first sample is taken as is.
        self.rtt_ms = sample if self.rtt_ms is None else 0.875 * self.rtt_ms + 0.125 * sample

    def ping_due(self, now: int) -> bool:
        """True when a heartbeat should go out now (and schedules the next one)."""
        if self.state not in (PeerState.UP, PeerState.SUSPECT) or self._next_ping is None:
            return False
        if now < self._next_ping:
            return False
        self._next_ping = now + self.heartbeat_ms
        return True

    def tick(self, now: int) -> PeerState | None:
        """Advance the state machine; returns the new state if it changed."""
        if self.last_heard is None or self.state in (PeerState.CONNECTING, PeerState.DOWN):
            return None
        silent = now - self.last_heard
        if silent >= self.down_after * self.heartbeat_ms:
            self.state = PeerState.DOWN
            return self.state
        if silent >= self.suspect_after * self.heartbeat_ms and self.state is PeerState.UP:
            self.state = PeerState.SUSPECT
            return self.state
        return None

    def next_timer(self) -> int | None:
        if self.state not in (PeerState.UP, PeerState.SUSPECT) or self.last_heard is None:
            return None
        deadlines = [self.last_heard + self.down_after * self.heartbeat_ms]
        if self.state is PeerState.UP:
            deadlines.append(self.last_heard + self.suspect_after * self.heartbeat_ms)
        if self._next_ping is not None:
            deadlines.append(self._next_ping)
        return min(deadlines)

    def mark_down(self) -> None:
        self.state = PeerState.DOWN
