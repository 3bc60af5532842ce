"""The simulator's world: devices on a virtual clock and a hostile network.

``SimWorld`` owns everything that moves bytes and time in a simulation
(``sim.py``): each device's real cores (``Messenger`` over ``SqlMessageStore``,
``NodeCore``) and starting or crashing them, the links between running devices
(cut by a partition), the frames in flight (dropped, duplicated and delayed at
random, so reordered) and the event loop that advances the virtual clock to the
next delivery, tick or wake-up. What happens to the world step by step (writes,
partitions, crashes, attacks, healing) is decided by ``Simulation`` in
``sim_driver.py``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiana.config import Settings
from kiana.errors import KianaError
from kiana.home import HomeLayout
from kiana.identity.mind import Genesis
from kiana.ledger import Params, SqlLedgerStore
from kiana.mesh.message_store_sql import SqlMessageStore
from kiana.mesh.messenger import Messenger
from kiana.store import BlockStore
from kiana.sync.core import NodeCore, Out
from kiana.sync.crdt import SqlOpStore
from kiana.sync.sim_mind import START_MS, DeviceSpec

__all__ = [
    "SIM_PARAMS",
    "TICK_MS",
    "Faults",
    "SimDevice",
    "SimWorld",
    "SimulationFailure",
    "tmp_root",
]

TICK_MS = 250
SIM_PARAMS = Params(period_ms=1_000)


class SimulationFailure(KianaError):
    code = "simulation_failure"


@dataclass
class Faults:
    drop: float = 0.05
    dup: float = 0.03
    delay_ms: tuple[int, int] = (1, 60)
    partition: float = 0.03  # per step: a partition starts (or, during one, ends)
    crash: float = 0.01  # per device and step
    write: float = 0.3  # per device and step
    attack: float = 0.3  # per step, for the rogue device


@dataclass
class SimDevice:
    spec: DeviceSpec
    settings: Settings
    store: BlockStore | None = None
    messenger: Messenger | None = None
    core: NodeCore | None = None
    restarts: int = 0
    down_until: int = -1

    @property
    def id(self) -> str:
        return self.spec.device_id


class SimWorld:
    """Devices, links, frames in flight and the virtual clock, driven by one seeded rng."""

    def __init__(
        self, seed: int, genesis: Genesis, devices: list[SimDevice], faults: Faults
    ) -> None:
        self.seed = seed
        self.genesis = genesis
        self.faults = faults
        self.rng = random.Random(seed)
        self.now = START_MS
        self.devices = devices
        self.by_id = {d.id: d for d in self.devices}
        self.box = {d.id: d.spec.keys.box_public for d in self.devices}
        self.person = {d.id: d.spec.person for d in self.devices}
        self.links: set[tuple[str, str]] = set()
        self.side: dict[str, int] | None = None  # partition: device -> side
        self.flight: list[tuple[int, int, str, str, bytes]] = []
        self._order = itertools.count()
        self._next_tick = self.now
        self.chaos = True
        self._step = 0
        self._dirty: set[str] = set()
        self._wake: dict[str, int | None] = {}
        self.stats = dict.fromkeys(("frames", "messages", "crashes", "partitions", "writes"), 0)

    # -- lifecycle of a device ------------------------------------------------------------------

    def _start(self, dev: SimDevice) -> None:
        url = dev.settings.effective_database_url
        dev.store = BlockStore.open(url, backup_dir=HomeLayout(dev.settings.home).backups)
        salt = self.seed * 7919 + self.devices.index(dev) * 104_729 + dev.restarts
        dev.messenger = Messenger(
            keys=dev.spec.keys,
            box_keys=self.box.get,
            store=SqlMessageStore(dev.store.db),
            rng=random.Random(salt),
            retry_base_ms=100,
            retry_cap_ms=2_000,
        )
        person = dev.spec.person
        core_rng = random.Random(salt + 1)
        dev.core = NodeCore(
            dev.store,
            dev.spec.keys,
            self.genesis,
            my_person=person,
            same_person=lambda peer: self.person.get(peer) == person,
            ledger_store=SqlLedgerStore(dev.store.db),
            state_store=SqlOpStore(dev.store.db),
            params=SIM_PARAMS,
            resync_ms=5_000,
            rng_bytes=core_rng.randbytes,
        )

    def _crash(self, dev: SimDevice) -> None:
        for a, b in sorted(self.links):
            if dev.id in (a, b):
                self._link_down(a, b)
        assert dev.store is not None and dev.core is not None
        dev.core.close()  # its verify thread
        dev.store.close()
        dev.store, dev.messenger, dev.core = None, None, None
        dev.restarts += 1
        self.stats["crashes"] += 1

    @staticmethod
    def running(dev: SimDevice) -> bool:
        return dev.core is not None

    # -- links and the wire ---------------------------------------------------------------------

    def _wanted(self, a: SimDevice, b: SimDevice) -> bool:
        if not (self.running(a) and self.running(b)):
            return False
        return self.side is None or self.side[a.id] == self.side[b.id]

    def _update_links(self) -> None:
        for a, b in itertools.combinations(self.devices, 2):
            pair = (min(a.id, b.id), max(a.id, b.id))
            want = self._wanted(a, b)
            if want and pair not in self.links:
                self.links.add(pair)
                for x, y in ((a, b), (b, a)):
                    assert x.messenger is not None and x.core is not None
                    x.messenger.peer_up(y.id, self.now)
                    self._dirty.add(x.id)
                    self._send(x, x.core.peer_up(y.id, self.now))
            elif not want and pair in self.links:
                self._link_down(*pair)

    def _link_down(self, a: str, b: str) -> None:
        self.links.discard((min(a, b), max(a, b)))
        for x, y in ((a, b), (b, a)):
            dev = self.by_id[x]
            if dev.messenger is not None and dev.core is not None:
                dev.messenger.peer_down(y)
                dev.core.peer_down(y)
        pair = {a, b}
        self.flight = [f for f in self.flight if {f[2], f[3]} != pair]
        heapq.heapify(self.flight)

    def _send(self, dev: SimDevice, outs: list[Out]) -> None:
        assert dev.messenger is not None
        for peer, channel, body in outs:
            dev.messenger.send(peer, channel, body, now=self.now)
            self.stats["messages"] += 1
        if outs:
            self._dirty.add(dev.id)

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        self.stats["frames"] += 1
        f = self.faults
        if (min(src, dst), max(src, dst)) not in self.links or self.rng.random() < f.drop:
            return
        for _ in range(2 if self.rng.random() < f.dup else 1):
            at = self.now + self.rng.randint(*f.delay_ms)
            heapq.heappush(self.flight, (at, next(self._order), src, dst, frame))

    # -- running ------------------------------------------------------------------------------------

    def _drain(self, dev: SimDevice) -> None:
        while dev.messenger is not None and (batch := dev.messenger.inbox(limit=50)):
            for item in batch:
                assert dev.core is not None
                outs = dev.core.handle(item.sender, item.channel, item.body, self.now)
                self._send(dev, outs)
                dev.messenger.consume(item.msg_id)

    def _next_time(self) -> int:
        times = [self._next_tick]
        if self.flight:
            times.append(self.flight[0][0])
        if self._dirty:
            times.append(self.now)
        times += [w for w in self._wake.values() if w is not None]
        return min(times)

    def _poll(self, dev: SimDevice) -> None:
        assert dev.messenger is not None
        for peer, frame in dev.messenger.poll(self.now):
            self._transmit(dev.id, peer, frame)
        dev.messenger.take_events()
        self._wake[dev.id] = dev.messenger.next_wakeup()

    def _run_until(self, end: int) -> None:
        for _ in range(200_000):
            t = self._next_time()
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            touched: list[SimDevice] = []
            while self.flight and self.flight[0][0] <= self.now:
                _at, _n, src, dst, frame = heapq.heappop(self.flight)
                dev = self.by_id[dst]
                assert dev.messenger is not None
                dev.messenger.receive(src, frame, self.now)
                self._dirty.add(dev.id)
                if self.chaos and self.rng.random() < self.faults.crash / 50:
                    self._crash(dev)  # stored and acked, not yet handled: handed over at restart
                    dev.down_until = self._step + 1
                elif dev not in touched:
                    touched.append(dev)
            for dev in touched:
                self._drain(dev)
            if self.now >= self._next_tick:
                self._next_tick = self.now + TICK_MS
                for dev in self.devices:
                    if dev.core is not None:
                        self._send(dev, dev.core.tick(self.now))
            for dev in self.devices:
                wake = self._wake.get(dev.id)
                if dev.messenger is None:
                    self._wake.pop(dev.id, None)
                elif dev.id in self._dirty or (wake is not None and wake <= self.now):
                    self._poll(dev)
            self._dirty.clear()
        raise SimulationFailure(f"the event loop did not reach {end} (livelock)")


def tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 1 << 30 else None
