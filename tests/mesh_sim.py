"""An in-memory network of Messengers with a virtual clock and a seeded, unreliable wire.

Frames between linked nodes are dropped, duplicated, delayed (and so reordered)
and optionally accompanied by corrupted copies, all from one ``random.Random``.
``pump()`` runs events in time order until nothing is left to do (or a time
limit), with a bounded number of steps. The "application" of every node drains
its inbox after each step (``consumed``), which is what exactly-once is
checked against; events are recorded as well.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kiana.identity import DeviceKeys
from kiana.mesh.message_store import Delivered, MessageStore
from kiana.mesh.messenger import (
    MessageAcked,
    MessageExpired,
    MessageReceived,
    MessageRejected,
    Messenger,
    MessengerEvent,
)

START = 1_704_067_200_000


@dataclass
class SimNode:
    keys: DeviceKeys
    open_store: Callable[[], MessageStore]
    close_store: Callable[[], None]
    messenger: Messenger
    consumed: list[Delivered] = field(default_factory=list)
    received: list[MessageReceived] = field(default_factory=list)
    acked: list[MessageAcked] = field(default_factory=list)
    expired: list[MessageExpired] = field(default_factory=list)
    rejected: list[MessageRejected] = field(default_factory=list)
    restarts: int = 0

    @property
    def id(self) -> str:
        return self.keys.device_id

    def record(self, events: list[MessengerEvent]) -> None:
        for e in events:
            if isinstance(e, MessageReceived):
                self.received.append(e)
            elif isinstance(e, MessageAcked):
                self.acked.append(e)
            elif isinstance(e, MessageExpired):
                self.expired.append(e)
            else:
                self.rejected.append(e)


class SimNet:
    def __init__(
        self,
        keys: list[DeviceKeys],
        *,
        seed: int,
        stores: list[tuple[Callable[[], MessageStore], Callable[[], None]]],
        drop: float = 0.0,
        dup: float = 0.0,
        delay: tuple[int, int] = (1, 30),
        tamper: float = 0.0,
        **messenger_args: int,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = START
        self.drop, self.dup, self.delay, self.tamper = drop, dup, delay, tamper
        self.directory = {k.device_id: k.box_public for k in keys}
        self.messenger_args = messenger_args
        self.nodes: dict[str, SimNode] = {}
        for i, (k, (open_store, close_store)) in enumerate(zip(keys, stores, strict=True)):
            node = SimNode(k, open_store, close_store, self._messenger(k, open_store(), i * 100))
            self.nodes[k.device_id] = node
        self.links: set[frozenset[str]] = set()
        self.flight: list[tuple[int, int, str, str, bytes]] = []
        self._order = itertools.count()
        self.sent_frames = 0

    def _messenger(self, keys: DeviceKeys, store: MessageStore, salt: int) -> Messenger:
        return Messenger(
            keys=keys,
            box_keys=self.directory.get,
            store=store,
            rng=random.Random(self.seed * 1000 + salt),
            **self.messenger_args,
        )

    # -- topology ----------------------------------------------------------------------------

    def connect(self, a: str, b: str) -> None:
        self.links.add(frozenset((a, b)))
        self.nodes[a].messenger.peer_up(b, self.now)
        self.nodes[b].messenger.peer_up(a, self.now)

    def connect_all(self) -> None:
        for a, b in itertools.combinations(self.nodes, 2):
            self.connect(a, b)

    def disconnect(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))
        self.nodes[a].messenger.peer_down(b)
        self.nodes[b].messenger.peer_down(a)
        # Whatever was on the wire of the broken link is lost.
        self.flight = [f for f in self.flight if frozenset((f[2], f[3])) != frozenset((a, b))]
        heapq.heapify(self.flight)

    def restart(self, name: str) -> None:
        """Crash ``name`` (volatile state lost) and start it again over its store."""
        node = self.nodes[name]
        node.close_store()
        node.restarts += 1
        salt = list(self.nodes).index(name) * 100 + node.restarts
        node.messenger = self._messenger(node.keys, node.open_store(), salt)
        for link in self.links:
            if name in link:
                (other,) = link - {name}
                node.messenger.peer_up(other, self.now)

    # -- the wire ----------------------------------------------------------------------------

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        self.sent_frames += 1
        if frozenset((src, dst)) not in self.links or self.rng.random() < self.drop:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            at = self.now + self.rng.randint(*self.delay)
            heapq.heappush(self.flight, (at, next(self._order), src, dst, frame))
        if self.rng.random() < self.tamper:
            at = self.now + self.rng.randint(*self.delay)
            heapq.heappush(self.flight, (at, next(self._order), src, dst, self._corrupt(frame)))

    def _corrupt(self, frame: bytes) -> bytes:
        how = self.rng.randrange(4)
        if how == 0:  # flip one bit after the type byte
            i = self.rng.randrange(1, len(frame))
            return frame[:i] + bytes([frame[i] ^ (1 << self.rng.randrange(8))]) + frame[i + 1 :]
        if how == 1:  # truncate
            return frame[: self.rng.randrange(len(frame))]
        if how == 2:  # garbage with a valid type byte
            return frame[:1] + self.rng.randbytes(self.rng.randrange(0, 200))
        return self.rng.randbytes(self.rng.randrange(0, 64))  # pure garbage

    def inject(self, src: str, dst: str, frame: bytes, at: int | None = None) -> None:
        """Put ``frame`` on the wire regardless of links and losses."""
        heapq.heappush(self.flight, (at or self.now, next(self._order), src, dst, frame))

    # -- running -----------------------------------------------------------------------------

    def next_time(self) -> int | None:
        times = [self.flight[0][0]] if self.flight else []
        for node in self.nodes.values():
            wake = node.messenger.next_wakeup()
            if wake is not None:
                times.append(wake)
        return min(times) if times else None

    def step(self) -> None:
        while self.flight and self.flight[0][0] <= self.now:
            _at, _n, src, dst, frame = heapq.heappop(self.flight)
            node = self.nodes[dst]
            node.record(node.messenger.receive(src, frame, self.now))
        for node in self.nodes.values():
            frames = node.messenger.poll(self.now)
            node.record(node.messenger.take_events())
            for peer, frame in frames:
                self._transmit(node.id, peer, frame)
            self.drain(node)

    def drain(self, node: SimNode) -> None:
        while batch := node.messenger.inbox(limit=50):
            for item in batch:
                node.consumed.append(item)
                node.messenger.consume(item.msg_id)

    def pump(self, *, until: int | None = None, max_steps: int = 20_000) -> int:
        """Run until quiet (or past ``until``); return the steps taken."""
        self.step()
        for steps in range(1, max_steps + 1):
            t = self.next_time()
            if t is None or (until is not None and t > until):
                if until is not None:
                    self.now = max(self.now, until)
                return steps
            self.now = max(self.now, t)
            self.step()
        raise AssertionError(f"network not quiet after {max_steps} steps (seed {self.seed})")

    def advance(self, ms: int) -> None:
        self.pump(until=self.now + ms)
