"""A deterministic simulation of a mind's devices: real cores, virtual clock, hostile network.

Each simulated device is a real home (``sim_mind``: keys, ``mind.json``, SQLite) running
a ``Messenger`` over its ``SqlMessageStore`` and a ``NodeCore`` (blocks, CRDT state,
ledger). One ``random.Random(seed)`` decides everything: writes on every side (shared and
private facts, forgetting, CRDT set/del/incr/add/remove), a network that drops,
duplicates, delays and so reorders every frame, partitions that come and go, crashes
(the in-memory objects are dropped; a restart rebuilds them from the SQLite files, and
messages stored but not yet handled are handed over again) and, optionally, a rogue
member sending forged and garbage input (``sim_rogue``).

After ``steps`` steps the network heals: partitions end, crashed devices restart,
writes stop, and the simulation runs until the devices' state stops changing (bounded).
Then ``sim_checks`` checks the invariants; a violation raises ``SimulationFailure``,
whose message ends with the command that replays the seed::

    python -m kiana.sync.sim --seed 1234 --nodes 4 --steps 400

``python -m kiana.sync.sim --seeds 1000`` runs many seeds and prints seeds per minute.

Known hole (found by this simulator, seed 5015 of an earlier version): the admission
policy accepts a tombstone for a block the receiver has not seen from any member, so a
rogue member can erase another person's block on a device that lacks it; that device
then refuses the block for good while every other device refuses the tombstone. The
rogue therefore only aims at blocks the receiver holds unless ``--tombstone-race``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
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
from kiana.sync.sim_checks import check, committed_ids, fingerprint
from kiana.sync.sim_mind import START_MS, DeviceSpec, MindCache, MindLayout, settings_for
from kiana.sync.sim_rogue import Forged, attack
from kiana.sync.sim_writes import Expected, write_once

TICK_MS = 250
CHECK_MS = 1_000
STABLE_CHECKS = 3
HEAL_MS = 600_000
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


@dataclass
class SimResult:
    seed: int
    steps: int
    virtual_ms: int
    heal_ms: int
    frames: int
    messages: int
    crashes: int
    partitions: int
    writes: int
    attacks: int
    wall_s: float
    counts: dict[str, int] = field(default_factory=dict)


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 3,
        steps: int = 200,
        authorities: int = 1,
        rogue: bool = False,
        tombstone_race: bool = False,
        faults: Faults | None = None,
        step_ms: int = 200,
        cache: MindCache | None = None,
        workdir: Path | None = None,
    ) -> None:
        if not 2 <= nodes <= 5:
            raise ValueError("a simulation runs 2 to 5 devices")
        self.seed = seed
        self.layout = MindLayout(nodes, authorities, rogue)
        self.tombstone_race = tombstone_race
        self.steps = steps
        self.step_ms = step_ms
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.now = START_MS
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="kiana-sim-", dir=_tmp_root()))
        self._cache = cache or MindCache(self.dir / "templates")
        self.genesis: Genesis
        self.genesis, specs = self._cache.copy(self.layout, self.dir / "homes")
        self.devices = [SimDevice(s, settings_for(self.dir / "homes" / s.name)) for s in specs]
        self.by_id = {d.id: d for d in self.devices}
        self.box = {d.id: d.spec.keys.box_public for d in self.devices}
        self.person = {d.id: d.spec.person for d in self.devices}
        self.links: set[tuple[str, str]] = set()
        self.side: dict[str, int] | None = None  # partition: device -> side
        self.partition_until = 0
        self.flight: list[tuple[int, int, str, str, bytes]] = []
        self._order = itertools.count()
        self._next_tick = self.now
        self.expected = Expected()
        self.forged = Forged()
        self.ever_committed: set[str] = set()
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
        assert dev.store is not None
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

    def _chaos_step(self) -> None:
        f, rng = self.faults, self.rng
        if self.side is None and rng.random() < f.partition:
            order = list(self.devices)
            rng.shuffle(order)
            cut = rng.randrange(1, len(order))
            self.side = {d.id: int(i >= cut) for i, d in enumerate(order)}
            self.partition_until = self._step + rng.randint(2, 40)
            self.stats["partitions"] += 1
        elif self.side is not None and self._step >= self.partition_until:
            self.side = None
        for dev in self.devices:
            if self.running(dev):
                if rng.random() < f.crash:
                    self._crash(dev)
                    dev.down_until = self._step + rng.randint(1, 25)
            elif self._step >= dev.down_until:
                self._restart(dev)
        self._update_links()
        for dev in self.devices:
            if dev.core is None or dev.store is None:
                continue
            if dev.spec.rogue:
                if rng.random() < f.attack:
                    self._attack(dev)
            elif rng.random() < f.write:
                self.stats["writes"] += write_once(
                    rng, dev.spec, dev.store, dev.core.state, self.now, self.expected, self.person
                )

    def _restart(self, dev: SimDevice) -> None:
        self._start(dev)
        self._update_links()
        self._drain(dev)

    def _attack(self, dev: SimDevice) -> None:
        assert dev.core is not None and dev.store is not None and dev.messenger is not None
        peers = sorted(p for pair in self.links if dev.id in pair for p in pair if p != dev.id)
        if not peers:
            return
        peer = self.rng.choice(peers)
        victims = list(dev.store.iter_blocks())[-20:]
        target = self.by_id[peer].store
        if target is not None:
            # A tombstone for a block the receiver has not seen yet is admitted from any
            # member (the known hole in the module docstring): by default
            # the rogue erases only blocks the receiver holds; --tombstone-race aims at
            # blocks it lacks.
            held = [b for b in victims if target.has(b.id)]
            victims = [b for b in victims if b not in held] if self.tombstone_race else held
        honest = [d.id for d in self.devices if not d.spec.rogue]
        msg = attack(
            self.rng,
            keys=dev.spec.keys,
            genesis=self.genesis,
            ledger=dev.core.ledger,
            victim_blocks=victims,
            honest=honest,
            now=self.now,
            forged=self.forged,
        )
        if msg is not None:
            dev.messenger.send(peer, msg[0], msg[1], now=self.now)
            self._dirty.add(dev.id)

    def _observe(self) -> None:
        for dev in self.devices:
            if dev.core is not None and not dev.spec.rogue:
                self.ever_committed |= committed_ids(dev.core.ledger)

    def run(self) -> SimResult:
        started = time.perf_counter()
        try:
            for dev in self.devices:
                self._start(dev)
            self._step = 0
            self._update_links()
            for step in range(self.steps):
                self._step = step
                self._chaos_step()
                self._run_until(self.now + self.step_ms)
                if step % 20 == 19:
                    self._observe()
            chaos_end = self.now
            self._heal()
            heal_ms = self.now - chaos_end
            problems = check(self)
        except SimulationFailure:
            raise
        except Exception as exc:  # any crash of a core is a finding: say how to replay it
            raise SimulationFailure(
                f"seed {self.seed}: {type(exc).__name__}: {exc}\nreplay: {self.replay_command()}"
            ) from exc
        finally:
            self.close()
        if problems:
            listed = "\n  ".join(problems[:20])
            raise SimulationFailure(
                f"seed {self.seed}: {len(problems)} invariant(s) violated:\n  {listed}\n"
                f"replay: {self.replay_command()}"
            )
        counts: dict[str, int] = {}
        for name, value in self.forged.sent.items():
            counts[f"attack_{name}"] = value
        return SimResult(
            self.seed,
            self.steps,
            self.now - START_MS,
            heal_ms,
            self.stats["frames"],
            self.stats["messages"],
            self.stats["crashes"],
            self.stats["partitions"],
            self.stats["writes"],
            sum(self.forged.sent.values()),
            time.perf_counter() - started,
            counts,
        )

    def _heal(self) -> None:
        self.chaos = False
        self.side = None
        for dev in self.devices:
            if not self.running(dev):
                self._start(dev)
        self._update_links()
        for dev in self.devices:
            self._drain(dev)
        self._observe()
        last: str | None = None
        stable = 0
        deadline = self.now + HEAL_MS
        while self.now < deadline:
            self._run_until(self.now + CHECK_MS)
            # Quiet: nothing queued for long (periodic resyncs come and go), no pending records.
            idle = all(
                d.messenger is not None
                and all(self.now - e.created <= CHECK_MS for e in d.messenger.outbox())
                and (d.spec.rogue or d.core is None or not d.core.ledger.pending)
                for d in self.devices
            )
            current = fingerprint(self)
            stable = stable + 1 if current == last and idle else 0
            last = current
            if stable >= STABLE_CHECKS:
                return

    def replay_command(self) -> str:
        cmd = f"python -m kiana.sync.sim --seed {self.seed} --nodes {self.layout.nodes}"
        cmd += f" --steps {self.steps}"
        if self.layout.authorities > 1:
            cmd += " --authorities 2"
        if self.layout.rogue:
            cmd += " --rogue"
        if self.tombstone_race:
            cmd += " --tombstone-race"
        return cmd

    def close(self) -> None:
        for dev in self.devices:
            if dev.store is not None:
                dev.store.close()
                dev.store, dev.messenger, dev.core = None, None, None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 1 << 30 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kiana.sync.sim", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--seed", type=int, default=1, help="the first (or only) seed")
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed on")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--authorities", type=int, choices=(1, 2), default=1)
    ap.add_argument("--rogue", action="store_true", help="add a malicious member")
    ap.add_argument(
        "--tombstone-race",
        action="store_true",
        help="let the rogue erase others' blocks on devices that lack them (a known hole)",
    )
    ap.add_argument("--vary", action="store_true", help="vary nodes/authorities/rogue by seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the rogue's input is refused with warnings
    started = time.perf_counter()
    failures: list[str] = []
    steps = 0
    with tempfile.TemporaryDirectory(prefix="kiana-sim-cache-", dir=_tmp_root()) as tmp:
        cache = MindCache(Path(tmp))
        for seed in range(args.seed, args.seed + args.seeds):
            nodes, auth, rogue = args.nodes, args.authorities, args.rogue
            if args.vary:
                nodes, auth, rogue = 3 + seed % 3, 1 + seed % 2, seed % 4 == 0
            sim = Simulation(
                seed,
                nodes=nodes,
                steps=args.steps,
                authorities=auth,
                rogue=rogue,
                tombstone_race=args.tombstone_race,
                cache=cache,
            )
            try:
                result = sim.run()
                steps += result.steps
                if args.seeds == 1:
                    print(result)
            except SimulationFailure as exc:
                failures.append(exc.message if hasattr(exc, "message") else str(exc))
                print(str(exc))
    elapsed = time.perf_counter() - started
    print(
        f"{args.seeds} seed(s), {len(failures)} failed, {elapsed:.1f} s, "
        f"{args.seeds / elapsed * 60:.0f} seeds/minute, {elapsed / max(steps, 1) * 1000:.2f} ms/step"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
