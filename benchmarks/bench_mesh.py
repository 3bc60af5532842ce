"""Benchmark mesh links and messages: real MeshServices on loopback TCP, in one process.

Usage::

    .venv/bin/python benchmarks/bench_mesh.py [--quick] [--link] [--latency] [--throughput]
                                              [--outbox] [--out benchmarks/results/mesh.json]

Two devices of one mind (A: the genesis laptop, B: a phone paired into it with a real
SPAKE2 pairing over loopback) run as ``MeshService``s in one asyncio loop, each with
its own SQLite home (WAL) and store thread. Sections (all when none is named):

``--link``        time from ``connect()`` to the handshake being done (TCP + Noise XX +
                  membership check), link closed between trials; baseline: a bare TCP
                  connect + one 1-byte round trip, interleaved trial by trial.
``--latency``     ``ping()`` (sealed message + sealed reply, durable outbox and inbox on
                  both ends), one-way ``send()`` to the handler on B, and a link-level
                  heartbeat frame round trip; baseline: a raw TCP echo, interleaved.
``--throughput``  1 MiB and 64 KiB messages A→B through the durable messenger, counted
                  by a handler on B, against raw length-prefixed TCP frames of the same
                  sizes (before and after); bytes on the wire; CPU per thread; where
                  the time goes; and the same steps (seal, open, Noise, SQLite) alone.
``--outbox``      B offline, A queues many small messages, B returns and dials A:
                  queue time, drain time, time until A's outbox is empty, frames sent
                  again, a timeline; zero loss and zero duplicates asserted.

"Where the time goes": the message store's methods, the NaCl sealing, the link crypto
and ``FramedStream.drain`` are wrapped with timers during the measured runs (their own
cost is estimated and recorded; well under 1 % of wall).

The machine is small and shared, so each number has a baseline measured in the same
run and the ratio is what to compare between runs (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from tests.mesh_helpers import init_node, pair_into, stop_service  # noqa: E402

import kiana.mesh.messenger as messenger_mod  # noqa: E402
from kiana.config import Settings  # noqa: E402
from kiana.mesh.envelope import Envelope, decode_ack, open_envelope, seal  # noqa: E402
from kiana.mesh.link import PING, Link  # noqa: E402
from kiana.mesh.message_store_sql import SqlMessageStore  # noqa: E402
from kiana.mesh.service import MeshService, now_ms  # noqa: E402
from kiana.mesh.tcp import FramedStream  # noqa: E402
from kiana.node import Node  # noqa: E402

CHANNEL = "app.bench"
# Loopback only, no mDNS (tests' QUIET_MESH); the default 2 s heartbeat as in production.
ENV = {"KIANA_MESH_HEARTBEAT_MS": "2000"}
TARGET_LINK_S = 0.3
MIB = 1 << 20

FULL = {"link_trials": 50, "pings": 200, "mib_1m": 128, "mib_64k": 64, "outbox": 10_000}
QUICK = {"link_trials": 10, "pings": 30, "mib_1m": 8, "mib_64k": 4, "outbox": 1_000}


# -- statistics ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "mean_ms": statistics.fmean(ms),
        "p95_ms": pct(ms, 0.95),
        "p99_ms": pct(ms, 0.99),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- services -------------------------------------------------------------------------------


async def open_service(settings: Settings, seed: int) -> MeshService:
    node = await asyncio.to_thread(Node.open, settings)
    return MeshService(node, settings, seed=seed)


async def outbox_count(svc: MeshService) -> int:
    row = await svc._run(
        svc.node.store.db.read, lambda c: c.one("SELECT COUNT(*) FROM mesh_outbox")
    )
    return int(row[0]) if row else 0


async def wait_for(check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str):
    deadline = time.perf_counter() + timeout_s
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def link_up(svc: MeshService, device: str) -> bool:
    peer = svc.peers.get(device)
    return bool(peer and peer.link and peer.link.state.value == "up")


def no_link(svc: MeshService, device: str) -> bool:
    peer = svc.peers.get(device)
    return peer is None or peer.link is None


async def settle(*services: MeshService, timeout_s: float = 30.0) -> None:
    """Every outbox empty (all messages acknowledged)."""

    async def empty() -> bool:
        for s in services:
            if await outbox_count(s):
                return False
        return True

    await wait_for(empty, timeout_s, "outboxes to drain")


async def close_link(a: MeshService, b: MeshService) -> None:
    bdev, adev = b.node.device_id, a.node.device_id
    peer = a.peers.get(bdev)
    if peer is not None and peer.link is not None:
        peer.link.close("benchmark: next trial")
        await a._flush(peer)
    await wait_for(lambda: no_link(a, bdev) and no_link(b, adev), 10, "the link to close")


class Pair:
    def __init__(self, a: MeshService, b: MeshService, sb: Settings) -> None:
        self.a, self.b, self.sb = a, b, sb

    @property
    def adev(self) -> str:
        return self.a.node.device_id

    @property
    def bdev(self) -> str:
        return self.b.node.device_id

    async def ensure_link(self) -> None:
        if not link_up(self.a, self.bdev):
            await self.a.connect("127.0.0.1", self.b.port, expect=self.bdev)
        await wait_for(lambda: link_up(self.b, self.adev), 10, "B's side of the link")


async def make_pair(workdir: Path) -> Pair:
    sa = await asyncio.to_thread(init_node, workdir / "a", "laptop", **ENV)
    a = await open_service(sa, seed=1)
    await a.start()
    sb = await pair_into(a, workdir / "b", "phone", **ENV)
    # The joiner keeps the inviter's address and would dial it by itself; the benchmark
    # decides who dials when, so forget it.
    node = await asyncio.to_thread(Node.open, sb)
    node.store.db.write(lambda c: c.execute("DELETE FROM mesh_addresses"))
    node.close()
    b = await open_service(sb, seed=2)
    await b.start()
    return Pair(a, b, sb)


# -- raw TCP baselines --------------------------------------------------------------------------


class RawEcho:
    """A loopback asyncio server that echoes every byte, and one that sinks frames."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(echo, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def open_nodelay(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import socket

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def raw_connect_rtt(port: int) -> float:
    t0 = time.perf_counter()
    reader, writer = await open_nodelay(port)
    writer.write(b"x")
    await reader.readexactly(1)
    t = time.perf_counter() - t0
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    return t


async def raw_stream(size: int, count: int) -> float:
    """Seconds to move ``count`` length-prefixed frames of ``size`` bytes over loopback."""
    done = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < count:
            head = await reader.readexactly(4)
            await reader.readexactly(int.from_bytes(head, "big"))
            got += 1
        done.set_result(time.perf_counter())
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = os.urandom(size)
    head = size.to_bytes(4, "big")
    t0 = time.perf_counter()
    _, writer = await open_nodelay(port)
    for _ in range(count):
        writer.writelines((head, payload))
        await writer.drain()
    end = await asyncio.wait_for(done, 60)
    writer.close()
    server.close()
    return end - t0


# -- 1. link setup ----------------------------------------------------------------------------


def memory_links(a: MeshService, b: MeshService) -> tuple[Link, Link]:
    """Two ``Link``s, A initiating, handshaken in memory (no I/O)."""
    now = now_ms()
    la = Link(
        initiator=True,
        keys=a.node.keys,
        mind_id=a.node.mind_id,
        lookup=a.directory.lookup,
        now=now,
        expect=b.node.device_id,
        max_frame=a.max_frame,
        record=a.directory.own_record(),
    )
    lb = Link(
        initiator=False,
        keys=b.node.keys,
        mind_id=b.node.mind_id,
        lookup=b.directory.lookup,
        now=now,
        max_frame=b.max_frame,
        record=b.directory.own_record(),
    )
    la.start()
    for src, dst in ((la, lb), (lb, la), (la, lb)):
        for frame in src.data_to_send():
            dst.receive_frame(frame, now)
    if la.state.value != "up" or lb.state.value != "up":
        raise RuntimeError("in-memory handshake failed")
    for link in (la, lb):
        while link.next_event() is not None:
            pass
    return la, lb


def memory_handshake(a: MeshService, b: MeshService) -> float:
    """One Noise XX handshake + membership check between in-memory ``Link``s: the CPU floor."""
    t0 = time.perf_counter()
    memory_links(a, b)
    return time.perf_counter() - t0


async def bench_link(pair: Pair, trials: int, start: float) -> dict[str, Any]:
    a, b = pair.a, pair.b
    echo = RawEcho()
    await echo.start()
    ours: list[float] = []
    both: list[float] = []
    raw: list[float] = []
    try:
        await raw_connect_rtt(echo.port)  # warm-up
        for i in range(trials):
            if not no_link(a, pair.bdev):
                await close_link(a, b)
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    raw.append(await raw_connect_rtt(echo.port))
                    continue
                t0 = time.perf_counter()
                device = await a.connect("127.0.0.1", b.port, expect=pair.bdev)
                ours.append(time.perf_counter() - t0)
                assert device == pair.bdev
                await wait_for(lambda: link_up(b, pair.adev), 10, "B's side of the link")
                both.append(time.perf_counter() - t0)
                await settle(a, b)  # the membership exchange every link-up sends
                await close_link(a, b)
    finally:
        await echo.close()
    mem = [memory_handshake(a, b) for _ in range(max(20, trials))]
    log(f"link setup: median {statistics.median(ours) * 1000:.1f} ms", start)
    return {
        "trials": trials,
        "connect": summary_ms(ours),
        "both_sides_up": summary_ms(both),
        "raw_tcp_connect_rtt": summary_ms(raw),
        "memory_handshake": summary_ms(mem),
        "raw_connect_s": raw,
        "connect_s": ours,
    }


# -- 2. latency -------------------------------------------------------------------------------


class LinkPinger:
    """Round trips of the link's own heartbeat frames (``P`` → ``O``): Noise + framing +
    asyncio streams, no messenger, no database."""

    def __init__(self, svc: MeshService, device: str) -> None:
        self.svc, self.device = svc, device
        self.link: Link | None = None
        self.pending: dict[int, asyncio.Future[float]] = {}

    def _hook(self, link: Link) -> None:
        health = link.health
        orig = health.on_pong

        def on_pong(sent_at: int, now: int) -> None:
            orig(sent_at, now)
            fut = self.pending.pop(sent_at, None)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        health.on_pong = on_pong  # type: ignore[method-assign]
        self.link = link

    async def rtt(self) -> float:
        peer = self.svc.peers[self.device]
        assert peer.link is not None
        if peer.link is not self.link:
            self._hook(peer.link)
        token = now_ms()
        while token in self.pending:
            token += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[token] = fut
        t0 = time.perf_counter()
        peer.link._send_frame(PING + token.to_bytes(8, "big"))
        await self.svc._flush(peer)
        end = await asyncio.wait_for(fut, 10)
        return end - t0


async def bench_latency(pair: Pair, n: int, start: float) -> dict[str, Any]:
    a, b = pair.a, pair.b
    await pair.ensure_link()
    await settle(a, b)
    echo = RawEcho()
    await echo.start()
    reader, writer = await open_nodelay(echo.port)
    arrivals: dict[int, float] = {}
    arrived = asyncio.Event()

    async def on_bench(sender: str, channel: str, body: bytes) -> None:
        arrivals[int.from_bytes(body[:8], "big")] = time.perf_counter()
        arrived.set()

    b.handlers[CHANNEL] = on_bench
    pinger = LinkPinger(a, pair.bdev)
    res: dict[str, list[float]] = defaultdict(list)
    pad = bytes(92)

    async def raw_rtt() -> float:
        t0 = time.perf_counter()
        writer.write(b"x" * 100)
        await reader.readexactly(100)
        return time.perf_counter() - t0

    async def ping() -> float:
        t0 = time.perf_counter()
        await a.ping(pair.bdev)
        t = time.perf_counter() - t0
        await settle(a, b)
        return t

    async def one_way(i: int) -> float:
        arrived.clear()
        t0 = time.perf_counter()
        await a.send(pair.bdev, CHANNEL, i.to_bytes(8, "big") + pad, ttl_ms=60_000)
        await wait_for(lambda: i in arrivals, 10, "a message on B")
        t = arrivals[i] - t0
        await settle(a, b)
        return t

    try:
        for _ in range(5):  # warm-up
            await raw_rtt()
            await pinger.rtt()
            await ping()
        for i in range(n):
            steps = ["raw", "link", "ping", "oneway"]
            k = i % 4
            for step in steps[k:] + steps[:k]:
                if step == "raw":
                    res["raw_tcp_echo"].append(await raw_rtt())
                elif step == "link":
                    res["link_frame_rtt"].append(await pinger.rtt())
                elif step == "ping":
                    res["messenger_ping_rtt"].append(await ping())
                else:
                    res["messenger_one_way"].append(await one_way(i))
        # Where a ping's time goes: the same pings again, instrumented.
        m = min(n, 50)
        counters = instrument(pair)
        wall = 0.0
        try:
            for _ in range(m):
                wall += await ping()
        finally:
            counters.restore()
    finally:
        writer.close()
        await echo.close()
        b.handlers.pop(CHANNEL, None)
    out: dict[str, Any] = {"samples": n, "body_bytes": 100}
    for key, values in res.items():
        out[key] = summary_ms(values)
    out["ping_breakdown"] = {
        "pings": m,
        "mean_ping_ms": wall / m * 1000,
        "per_ping": counters.table(per=m, unit_ms=wall * 1000 / m, unit="ms_per_ping"),
    }
    log(f"latency: ping median {out['messenger_ping_rtt']['median_ms']:.1f} ms", start)
    return out


# -- 3. throughput ----------------------------------------------------------------------------


def thread_cpu(pair: Pair) -> dict[str, float]:
    """CPU seconds so far of the event-loop thread and of A's and B's store threads
    (``/proc/self/task/*/stat``, 10 ms ticks), to see which one is saturated."""
    names = {threading.main_thread().native_id: "event loop (A+B)"}
    for side, svc in (("A", pair.a), ("B", pair.b)):
        for t in list(getattr(svc._db, "_threads", ())):
            names[t.native_id] = f"{side} store thread"
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            out[names.get(int(task.name), "other threads")] += cpu
    return dict(out)


def cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, Any]:
    keys = sorted(set(before) | set(after))
    return {
        k: {
            "cpu_seconds": round(after.get(k, 0.0) - before.get(k, 0.0), 3),
            "share_of_wall": round((after.get(k, 0.0) - before.get(k, 0.0)) / wall, 3),
        }
        for k in keys
    }


class Counters:
    """Where the time goes: wall seconds inside wrapped functions, by side (A/B)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []
        self.active = True

    def start(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.active = True

    def stop(self) -> None:
        self.active = False

    def wrap(self, owner: Any, name: str, label: Callable[[tuple[Any, ...]], str]) -> None:
        orig = getattr(owner, name)

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return orig(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                key = label(args)
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, orig))

    def wrap_async(self, owner: Any, name: str, label: Callable[[tuple[Any, ...]], str]) -> None:
        """Wall time spent awaiting an async method (waiting, not CPU)."""
        orig = getattr(owner, name)

        @functools.wraps(orig)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return await orig(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return await orig(*args, **kwargs)
            finally:
                key = label(args)
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, orig))

    def overhead_share(self, wall_s: float) -> float:
        """Estimated share of ``wall_s`` the wrappers themselves cost (calls x cost of one)."""

        def noop() -> None:
            return None

        holder = type("Holder", (), {"f": staticmethod(noop)})
        probe = Counters()
        probe.wrap(holder, "f", lambda args: "noop")
        reps = 20_000
        t0 = time.perf_counter()
        for _ in range(reps):
            holder.f()
        wrapped = time.perf_counter() - t0
        probe.restore()
        t0 = time.perf_counter()
        for _ in range(reps):
            holder.f()
        plain = time.perf_counter() - t0
        per_call = max(0.0, wrapped - plain) / reps
        return round(sum(self.calls.values()) * per_call / wall_s, 4)

    def table(self, per: float, unit_ms: float, unit: str) -> dict[str, dict[str, float]]:
        """Per unit of work (a ping, a MiB, a message): ms inside each function, calls,
        and the share of the unit's wall time (``unit_ms``)."""
        return {
            k: {
                unit: round(v * 1000 / per, 4),
                "calls_per_unit": round(self.calls[k] / per, 2),
                "share_of_wall": round(v * 1000 / per / unit_ms, 3),
            }
            for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])
        }

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def instrument(pair: Pair) -> Counters:
    """Time the message store, the NaCl sealing and the link crypto, by device (A/B)."""
    c = Counters()

    def side(device: str) -> str:
        return "A" if device == pair.adev else "B"

    def store_label(name: str) -> Callable[[tuple[Any, ...]], str]:
        return lambda args: f"{'A' if args[0].db is pair.a.node.store.db else 'B'} store.{name}"

    for name in (
        "add_outgoing",
        "due",
        "record_attempts",
        "reschedule",
        "remove_acked",
        "expire_outgoing",
        "next_outgoing",
        "deliver",
        "consume",
        "next_release",
        "pending_inbox",
        "prune_seen",
    ):
        c.wrap(SqlMessageStore, name, store_label(name))
    c.wrap(messenger_mod, "seal", lambda args: f"{side(args[0].sender)} seal (NaCl Box)")
    c.wrap(
        messenger_mod,
        "open_envelope",
        lambda args: f"{side(args[1].device_id)} open_envelope (NaCl Box)",
    )

    def link_label(name: str) -> Callable[[tuple[Any, ...]], str]:
        return lambda args: f"{side(args[0].keys.device_id)} Link.{name}"

    c.wrap(Link, "send", link_label("send (Noise encrypt)"))
    c.wrap(Link, "receive_frame", link_label("receive_frame (Noise decrypt)"))

    def stream_side(args: tuple[Any, ...]) -> str:
        writer = args[0].writer
        local = (writer.get_extra_info("sockname") or ("", 0))[1]
        remote = (writer.get_extra_info("peername") or ("", 0))[1]
        a_port, b_port = pair.a.port, pair.b.port
        if local == a_port or remote == b_port:
            return "A waits in stream.drain (send buffer full)"
        if local == b_port or remote == a_port:
            return "B waits in stream.drain (send buffer full)"
        return "? waits in stream.drain"

    c.wrap_async(FramedStream, "drain", stream_side)
    return c


async def run_stream(
    pair: Pair, size: int, count: int, counters: Counters | None = None
) -> dict[str, Any]:
    """A sends ``count`` messages of ``size`` bytes, awaiting each durable ``send``."""
    a, b = pair.a, pair.b
    await pair.ensure_link()
    await settle(a, b)
    seen: set[int] = set()
    calls = 0
    done = asyncio.get_running_loop().create_future()

    async def sink(sender: str, channel: str, body: bytes) -> None:
        nonlocal calls
        calls += 1
        seen.add(int.from_bytes(body[:8], "big"))
        if len(seen) == count and not done.done():
            done.set_result(time.perf_counter())

    b.handlers[CHANNEL] = sink
    link_a = a.peers[pair.bdev].link
    assert link_a is not None
    out0, in0 = link_a.bytes_out, link_a.bytes_in
    filler = os.urandom(size - 8)
    cpu0 = thread_cpu(pair)
    if counters is not None:
        counters.start()
    t0 = time.perf_counter()
    for i in range(count):
        await a.send(pair.bdev, CHANNEL, i.to_bytes(8, "big") + filler, ttl_ms=600_000)
    t_queued = time.perf_counter() - t0
    end = await asyncio.wait_for(done, 300)
    if counters is not None:
        counters.stop()
    cpu = cpu_share(cpu0, thread_cpu(pair), end - t0)
    await settle(a, b, timeout_s=120)
    t_acked = time.perf_counter() - t0
    b.handlers.pop(CHANNEL, None)
    if calls != count or len(seen) != count:
        raise RuntimeError(f"stream: {len(seen)} unique of {count}, {calls} deliveries")
    seconds = end - t0
    payload = size * count
    return {
        "size": size,
        "count": count,
        "seconds": seconds,
        "queued_seconds": t_queued,
        "acked_seconds": t_acked,
        "mib_per_s": payload / MIB / seconds,
        "wire_bytes_a_to_b": link_a.bytes_out - out0,
        "wire_bytes_b_to_a": link_a.bytes_in - in0,
        "wire_amplification": (link_a.bytes_out - out0) / payload,
        "deliveries": calls,
        "thread_cpu": cpu,
    }


def isolated_costs(pair: Pair, size: int, workdir: Path, reps: int) -> dict[str, float]:
    """Milliseconds per message for each step alone (no I/O, no contention)."""
    a, b = pair.a, pair.b
    body = os.urandom(size)
    now = now_ms()
    env = Envelope(
        "0" * 32, a.node.device_id, b.node.device_id, CHANNEL, 0, now, now + 60_000, False, body
    )
    b_key = b.directory.box_key(b.node.device_id)
    assert b_key is not None
    out: dict[str, float] = {}

    def per_call(fn: Callable[[], Any]) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1000

    sealed = seal(env, a.node.keys.box, b_key)
    out["seal (NaCl Box)"] = per_call(lambda: seal(env, a.node.keys.box, b_key))
    out["open_envelope (NaCl Box)"] = per_call(
        lambda: open_envelope(
            sealed, b.node.keys, b.directory.box_key, now=now, max_body=a.messenger.max_body
        )
    )
    # Link encrypt/decrypt on in-memory pairs (records of 60 000 bytes).
    frame = b"M" + sealed
    la, _ = memory_links(a, b)

    def enc() -> None:
        la.send(frame)
        la.data_to_send()

    lx, ly = memory_links(a, b)

    def enc_dec() -> None:
        lx.send(frame)
        for r in lx.data_to_send():
            ly.receive_frame(r, now)
        while ly.next_event() is not None:
            pass

    out["Link.send (Noise encrypt)"] = per_call(enc)
    out["Link.send + receive_frame (Noise both ways)"] = per_call(enc_dec)
    if ly.state.value != "up":
        raise RuntimeError("in-memory link failed")
    # SQLite: the same rows the store writes, on a plain connection (WAL, synchronous=NORMAL).
    path = workdir / f"raw-{size}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, blob BLOB)")
    blob = sealed
    i = 0

    def insert() -> None:
        nonlocal i
        i += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, blob))
        conn.execute("COMMIT")

    out["raw sqlite INSERT blob (1 txn)"] = per_call(insert)
    out["raw sqlite SELECT blob"] = per_call(
        lambda: conn.execute("SELECT blob FROM t WHERE id = ?", (i,)).fetchone()
    )

    def delete() -> None:
        nonlocal i
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM t WHERE id = ?", (i,))
        conn.execute("COMMIT")
        i -= 1

    out["raw sqlite DELETE blob (1 txn)"] = per_call(delete)
    conn.close()
    return out


async def bench_throughput(
    pair: Pair, mib_1m: int, mib_64k: int, workdir: Path, start: float
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for label, size, mib in (("1MiB", MIB, mib_1m), ("64KiB", 64 * 1024, mib_64k)):
        count = max(2, mib * MIB // size)
        log(f"throughput {label}: {count} messages ({mib} MiB), raw TCP before and after", start)
        raw1 = await raw_stream(size, count)
        counters = instrument(pair)
        counters.stop()
        try:
            ours = await run_stream(pair, size, count, counters)
        finally:
            counters.restore()
        raw2 = await raw_stream(size, count)
        raw_s = (raw1 + raw2) / 2
        raw_rate = size * count / MIB / raw_s
        log(f"  KI_ana {ours['mib_per_s']:.1f} MiB/s, raw TCP {raw_rate:.0f} MiB/s", start)
        mib_sent = size * count / MIB
        breakdown = counters.table(
            per=mib_sent, unit_ms=ours["seconds"] * 1000 / mib_sent, unit="ms_per_mib"
        )
        res[label] = {
            "ours": ours,
            "raw_tcp": {
                "seconds_before": raw1,
                "seconds_after": raw2,
                "mib_per_s": raw_rate,
            },
            "ratio": ours["mib_per_s"] / raw_rate,
            "breakdown": breakdown,
            "instrumentation_overhead_share": counters.overhead_share(ours["seconds"]),
            "isolated_ms_per_message": isolated_costs(
                pair, size, workdir, reps=10 if size >= MIB else 50
            ),
        }
    return res


# -- 4. outbox under load -----------------------------------------------------------------------


async def bench_outbox(pair: Pair, n: int, start: float) -> dict[str, Any]:
    """B goes offline, A queues ``n`` messages for it, B comes back and dials A.

    Instrumented (store, sealing, link crypto; the wrappers' own cost is estimated), with
    a timeline sampled every 0.25 s."""
    a = pair.a
    bdev, adev = pair.bdev, pair.adev
    log(f"outbox: B offline, A queues {n:,}, B returns", start)
    await pair.ensure_link()
    await settle(a, pair.b)
    await close_link(a, pair.b)
    await stop_service(pair.b)
    counters = instrument(pair)
    try:
        pad = bytes(92)
        t0 = time.perf_counter()
        for i in range(n):
            await a.send(bdev, CHANNEL, i.to_bytes(8, "big") + pad, ttl_ms=3_600_000)
        t_queue = time.perf_counter() - t0
        queue_table = counters.table(per=n, unit_ms=t_queue * 1000 / n, unit="ms_per_message")
        queue_overhead = counters.overhead_share(t_queue)
        counters.stop()
        queued = await outbox_count(a)
        log(f"  queued {n:,} in {t_queue:.1f} s ({queued:,} in A's outbox); B returns", start)

        counts: dict[int, int] = defaultdict(int)
        done = asyncio.get_running_loop().create_future()
        wire: dict[str, int] = defaultdict(int)

        async def sink(sender: str, channel: str, body: bytes) -> None:
            counts[int.from_bytes(body[:8], "big")] += 1
            if len(counts) == n and not done.done():
                done.set_result(time.perf_counter())

        t_start = time.perf_counter()
        b = await open_service(pair.sb, seed=3)
        b.handlers[CHANNEL] = sink
        receive = b.messenger.receive

        def counting_receive(peer: str, frame: bytes, now: int) -> list[Any]:
            wire[frame[:1].decode("ascii", "replace")] += 1
            return receive(peer, frame, now)

        b.messenger.receive = counting_receive  # type: ignore[method-assign]
        a_receive = a.messenger.receive
        acks_at_a = {"frames": 0, "ids": 0}

        def counting_receive_a(peer: str, frame: bytes, now: int) -> list[Any]:
            if frame[:1] == b"A":
                acks_at_a["frames"] += 1
                with contextlib.suppress(Exception):
                    acks_at_a["ids"] += len(decode_ack(frame))
            return a_receive(peer, frame, now)

        a.messenger.receive = counting_receive_a  # type: ignore[method-assign]
        await b.start()
        pair.b = b
        timeline: list[dict[str, float]] = []
        sampling = True

        async def sample(t_ref: float) -> None:
            while sampling:
                timeline.append(
                    {
                        "t": round(time.perf_counter() - t_ref, 3),
                        "delivered": len(counts),
                        "frames_at_b": wire.get("M", 0),
                        "a_outbox": await outbox_count(a),
                        "ack_frames_at_a": acks_at_a["frames"],
                        "acked_ids_at_a": acks_at_a["ids"],
                    }
                )
                await asyncio.sleep(0.25)

        cpu0 = thread_cpu(pair)
        counters.start()
        t_conn = time.perf_counter()
        sampler = asyncio.ensure_future(sample(t_conn))
        await b.connect("127.0.0.1", a.port, expect=adev)
        t_link = time.perf_counter()
        end = await asyncio.wait_for(done, 300)
        cpu = cpu_share(cpu0, thread_cpu(pair), end - t_conn)
        frames_at_delivery = wire.get("M", 0)
        await settle(a, b, timeout_s=180)
        t_acked = time.perf_counter()
        counters.stop()
        sampling = False
        await sampler
        drain_table = counters.table(
            per=n, unit_ms=(t_acked - t_conn) * 1000 / n, unit="ms_per_message"
        )
        drain_overhead = counters.overhead_share(t_acked - t_conn)
    finally:
        counters.restore()
        with contextlib.suppress(NameError):
            a.messenger.receive = a_receive  # type: ignore[method-assign]
    await asyncio.sleep(0.5)  # anything arriving late now would be a duplicate
    dups = sum(c - 1 for c in counts.values())
    lost = n - len(counts)
    pending = await b.inbox(channel=CHANNEL)
    drain = end - t_conn
    out = {
        "messages": n,
        "body_bytes": 100,
        "queue_seconds": t_queue,
        "queue_per_s": n / t_queue,
        "b_start_seconds": t_conn - t_start,
        "link_seconds": t_link - t_conn,
        "drain_seconds": drain,
        "drain_per_s": n / drain,
        "all_acked_seconds": t_acked - t_conn,
        "delivered_unique": len(counts),
        "lost": lost,
        "duplicates_delivered": dups,
        "inbox_left_unconsumed": len(pending),
        "message_frames_received_by_b": wire.get("M", 0),
        "message_frames_by_last_delivery": frames_at_delivery,
        "ack_frames_received_by_a": acks_at_a["frames"],
        "acked_ids_received_by_a": acks_at_a["ids"],
        "wire_retransmissions": wire.get("M", 0) - len(counts),
        "thread_cpu": cpu,
        "queue_breakdown": queue_table,
        "queue_instrumentation_overhead_share": queue_overhead,
        "drain_breakdown": drain_table,
        "drain_instrumentation_overhead_share": drain_overhead,
        "timeline": timeline,
    }
    log(
        f"  drained in {drain:.1f} s ({out['drain_per_s']:,.0f}/s), all acked after "
        f"{t_acked - t_conn:.1f} s, lost {lost}, dups {dups}, "
        f"{out['wire_retransmissions']:,} frames sent again",
        start,
    )
    if lost or dups or pending:
        raise SystemExit(f"outbox: {lost} lost, {dups} duplicates, {len(pending)} unconsumed")
    return out


# -- environment and report -------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import nacl

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "pynacl": getattr(nacl, "__version__", ""),
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def cpu_text(cpu: dict[str, Any]) -> str:
    short = {"event loop (A+B)": "loop", "A store thread": "A db", "B store thread": "B db"}
    return ", ".join(f"{short[k]} {v['share_of_wall']:.0%}" for k, v in cpu.items() if k in short)


def totals(table: dict[str, dict[str, float]], unit: str, fmt: str = "{:.2f}") -> str:
    """Sum a breakdown into message-store (SQLite) calls and crypto (NaCl Box + Noise)."""
    # add_outgoing seals inside its transaction: count that time once, as crypto.
    sealing = sum(v[unit] for k, v in table.items() if " seal " in k)
    store = sum(v[unit] for k, v in table.items() if " store." in k) - sealing
    calls = sum(v["calls_per_unit"] for k, v in table.items() if " store." in k)
    crypto = sum(v[unit] for k, v in table.items() if "NaCl" in k or "Noise" in k)
    share = sum(v["share_of_wall"] for k, v in table.items() if " store." in k)
    share -= sum(v["share_of_wall"] for k, v in table.items() if " seal " in k)
    return (
        f"store {fmt.format(store)} ({calls:.3g} calls, {share:.0%} of wall), "
        f"crypto {fmt.format(crypto)}"
    )


def build_rows(res: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(measure: str, ours: str, base: str = "", base_v: str = "", ratio: str = "", t=""):
        rows.append(
            {
                "measure": measure,
                "ours": ours,
                "baseline": base,
                "baseline_value": base_v,
                "ratio": ratio,
                "target": t,
            }
        )

    def ms(v: float) -> str:
        return f"{v:.3f} ms" if v < 1 else f"{v:.1f} ms"

    link = res.get("link")
    if link:
        c, r = link["connect"], link["raw_tcp_connect_rtt"]
        for q in ("median", "p95"):
            o, b = c[f"{q}_ms"], r[f"{q}_ms"]
            ok = "met" if o / 1000 <= TARGET_LINK_S else "MISSED"
            add(f"link setup (connect → handshake done) {q}", ms(o),
                "raw TCP connect + 1 RTT", ms(b), f"{o / b:.0f}×", f"≤ {TARGET_LINK_S} s ({ok})")  # fmt: skip
        add("  both sides up, median", ms(link["both_sides_up"]["median_ms"]))
        add("  Noise XX in memory (CPU floor), median", ms(link["memory_handshake"]["median_ms"]))
    lat = res.get("latency")
    if lat:
        r = lat["raw_tcp_echo"]
        for key, name in (
            ("messenger_ping_rtt", "ping() round trip (sealed, durable both ways)"),
            ("messenger_one_way", "send() → handler on B, one way"),
            ("link_frame_rtt", "link frame round trip (heartbeat P/O)"),
        ):
            for q in ("median", "p99"):
                o, b = lat[key][f"{q}_ms"], r[f"{q}_ms"]
                add(f"{name} {q}", ms(o), "raw TCP echo RTT, 100 B", ms(b), f"{o / b:.0f}×")
        pb = lat["ping_breakdown"]["per_ping"]
        add("  ping: where the time goes, ms per ping", totals(pb, "ms_per_ping", "{:.2f} ms"))
        for name, v in list(pb.items())[:3]:
            add(f"  ping: {name}", f"{v['ms_per_ping']:.3f} ms", "", "", "",
                f"{v['calls_per_unit']:g} calls, {v['share_of_wall']:.0%} of wall")  # fmt: skip
    thr = res.get("throughput")
    if thr:
        for label, t in thr.items():
            o, b = t["ours"]["mib_per_s"], t["raw_tcp"]["mib_per_s"]
            add(f"throughput, {label} messages A→B (durable)", f"{o:.1f} MiB/s",
                "raw TCP, same frames", f"{b:,.0f} MiB/s", f"{o / b:.3f}×")  # fmt: skip
            add(f"  wire bytes / payload ({label})", f"{t['ours']['wire_amplification']:.2f}×")
            add(f"  {label}: CPU / wall by thread", cpu_text(t["ours"]["thread_cpu"]))
            iso = t["isolated_ms_per_message"]
            add(f"  {label}: each step alone, ms per message",
                f"seal {iso['seal (NaCl Box)']:.2f}, open {iso['open_envelope (NaCl Box)']:.2f}, "
                f"link {iso['Link.send + receive_frame (Noise both ways)']:.2f}, "
                f"sqlite insert {iso['raw sqlite INSERT blob (1 txn)']:.2f} / "
                f"delete {iso['raw sqlite DELETE blob (1 txn)']:.2f}")  # fmt: skip
            add(f"  {label}: where the time goes, per MiB",
                totals(t["breakdown"], "ms_per_mib", "{:.1f} ms"))  # fmt: skip
            for name, v in list(t["breakdown"].items())[:4]:
                add(f"  {label}: {name}", f"{v['ms_per_mib']:.1f} ms/MiB", "", "", "",
                    f"{v['share_of_wall']:.0%} of wall")  # fmt: skip
    ob = res.get("outbox")
    if ob:
        n = ob["messages"]
        add(f"outbox: queue {n:,} × 100 B while B offline", f"{ob['queue_seconds']:.1f} s",
            "", "", "", f"{ob['queue_per_s']:,.0f} msg/s")  # fmt: skip
        add("outbox: B back → all delivered (drain)", f"{ob['drain_seconds']:.1f} s",
            "", "", "", f"{ob['drain_per_s']:,.0f} msg/s")  # fmt: skip
        add("outbox: lost / duplicates delivered",
            f"{ob['lost']} / {ob['duplicates_delivered']}", "", "", "", "0 / 0")  # fmt: skip
        add("outbox: message frames sent again (retries)", f"{ob['wire_retransmissions']:,}",
            "", "", "", f"{ob['message_frames_received_by_b'] / n:.2f} frames/message")  # fmt: skip
        add("outbox: B back → A's outbox empty (all acked)",
            f"{ob['all_acked_seconds']:.1f} s")  # fmt: skip
        add("  queue: where the time goes, per message",
            totals(ob["queue_breakdown"], "ms_per_message", "{:.3f} ms"))  # fmt: skip
        for name, v in list(ob["queue_breakdown"].items())[:3]:
            add(f"  queue: {name}", f"{v['ms_per_message']:.3f} ms/msg", "", "", "",
                f"{v['calls_per_unit']:g} calls, {v['share_of_wall']:.0%} of wall")  # fmt: skip
        add("  drain: CPU / wall by thread", cpu_text(ob["thread_cpu"]))
        add("  drain: where the time goes, per message",
            totals(ob["drain_breakdown"], "ms_per_message", "{:.3f} ms"))  # fmt: skip
        for name, v in list(ob["drain_breakdown"].items())[:4]:
            add(f"  drain: {name}", f"{v['ms_per_message']:.3f} ms/msg", "", "", "",
                f"{v['calls_per_unit']:g} calls, {v['share_of_wall']:.0%} of wall")  # fmt: skip
    return rows


def print_table(title: str, rows: list[dict[str, str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for r in rows:
            print(" | ".join(r.values()))
        return
    table = Table(title=title)
    for col in ("Measure", "KI_ana", "Baseline", "Baseline value", "Ratio", "Target / note"):
        table.add_column(col, justify="left" if col in ("Measure", "Baseline") else "right")
    for r in rows:
        table.add_row(*r.values())
    Console(width=160).print(table)


async def run(args: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    start = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kiana-bench-mesh-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine_info(), "params": sizes}
    try:
        log("pairing two devices on loopback", start)
        pair = await make_pair(workdir)
        try:
            if args.link:
                log(f"link setup: {sizes['link_trials']} trials", start)
                result["link"] = await bench_link(pair, sizes["link_trials"], start)
            if args.latency:
                log(f"latency: {sizes['pings']} samples each", start)
                result["latency"] = await bench_latency(pair, sizes["pings"], start)
            if args.throughput:
                result["throughput"] = await bench_throughput(
                    pair, sizes["mib_1m"], sizes["mib_64k"], workdir, start
                )
            if args.outbox:
                result["outbox"] = await bench_outbox(pair, sizes["outbox"], start)
        finally:
            with contextlib.suppress(Exception):
                await close_link(pair.a, pair.b)
            for svc in (pair.b, pair.a):
                with contextlib.suppress(Exception):
                    await stop_service(svc)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["total_seconds"] = time.perf_counter() - start
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    log("done", start)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 20 s)")
    ap.add_argument("--link", action="store_true", help="only the sections named")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--outbox", action="store_true")
    ap.add_argument("--link-trials", type=int, help="link setups (default 50)")
    ap.add_argument("--pings", type=int, help="latency samples per measure (default 200)")
    ap.add_argument("--mib-1m", type=int, help="MiB sent as 1 MiB messages (default 64)")
    ap.add_argument("--mib-64k", type=int, help="MiB sent as 64 KiB messages (default 32)")
    ap.add_argument("--outbox-messages", type=int, help="messages queued offline (10000)")
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/mesh.json)")
    ap.add_argument("--workdir", help="where the homes live (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if not (args.link or args.latency or args.throughput or args.outbox):
        args.link = args.latency = args.throughput = args.outbox = True
    sizes = dict(QUICK if args.quick else FULL)
    for key, opt in (
        ("link_trials", args.link_trials),
        ("pings", args.pings),
        ("mib_1m", args.mib_1m),
        ("mib_64k", args.mib_64k),
        ("outbox", args.outbox_messages),
    ):
        if opt is not None:
            sizes[key] = opt
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run(args, sizes))
    rows = build_rows(result)
    result["table"] = rows
    m = result["machine"]
    title = (
        f"KI_ana mesh benchmark — loopback TCP, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"SQLite {m['sqlite']}, {m['date']}{' (quick)' if args.quick else ''}"
    )
    print_table(title, rows)
    default = Path(tempfile.gettempdir()) / "mesh-quick.json" if args.quick else None
    out = args.out or default or ROOT / "results" / "mesh.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
