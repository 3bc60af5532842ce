"""Benchmark memory sync: real MeshServices on loopback TCP, in one process.

Usage::

    .venv/bin/python benchmarks/bench_sync.py [--blocks 20000] [--trials 50] [--quick]
                                              [--no-profile] [--out benchmarks/results/sync.json]
                                              [--mode both|two-process|in-process]
                                              [--bulk-repeats 1]

Devices of one mind and one person (``tests.mind_helpers.make_mind``: paired in process,
no sockets) each get their own SQLite home (WAL) and run as ``MeshService``s, linked over
127.0.0.1 with the durable messenger, mDNS off, every record verified on arrival (id,
Ed25519 signature, author a member). Sections:

1. **Bulk sync into an empty device.** A holds N signed blocks (synthetic notes from
   ``bench_store``'s corpus, stored with ``put_many(verified=True)``); B is empty. Both
   start, A dials B, and the clock runs until B has stored all N (the engine's
   ``on_stored`` callback, then a ``COUNT(*)``). B runs and is measured in this process;
   A runs in a process of its own (``sync_source.py``, over a pipe: "two-process", as two
   devices are) or in this one ("in-process": both devices share one GIL, the old setup).
   ``--mode both`` (the default) runs each case in both modes, a fresh A and a fresh copy
   of the empty device each time, ``--bulk-repeats`` times, and reports the medians and
   the ratio two-process / in-process. Baselines in the same run, on the same
   blocks: raw PyNaCl ``VerifyKey.verify`` (before and after) and the store path with no
   network (JSON line → ``parse_block`` → ``put_many(verified=False)`` into an empty
   device of the same mind, before and after). Bytes on the link per block, CPU per
   thread, and the sync messages by kind.
2. **Where the time goes.** The same bulk transfer again, A → a second empty device E,
   under ``cProfile`` in A's and E's store threads and in the event loop thread
   (profiling slows it; shares, not absolute times, are the point).
3. **Reconciliation when already in sync** (the periodic resync, every 30 s): A and B
   both hold N; a resync is forced K times; round trips, bytes both ways, time until
   both sides know they are in sync; baseline: the same ``Reconciler`` exchange in
   memory on the same item sets.
4. **Propagation.** A and B linked and in sync; a fact is written on A by a *separate*
   ``Node`` on A's home (as ``kiana remember`` in another process would) and the clock
   runs until B has stored it; 50 trials at random phases of the 250 ms sync tick.

Sections 2-4 run both devices in this process.

The machine is small and shared, so each rate has a baseline measured in the same run
and the ratio is what to compare between runs (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import functools
import json
import logging
import os
import platform
import pstats
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from tests.mind_helpers import make_mind, quiet_settings  # noqa: E402

import bench_store  # noqa: E402
from kiana.blocks import Block  # noqa: E402
from kiana.blocks.codec import loads_record, parse_block  # noqa: E402
from kiana.blocks.model import BLOCK_DOMAIN  # noqa: E402
from kiana.config import Settings  # noqa: E402
from kiana.mesh.service import SYNC_TICK_S, MeshService, now_ms  # noqa: E402
from kiana.node import Node  # noqa: E402
from kiana.sync.engine import BATCH_BYTES, RESYNC_MS, WANT_IDS  # noqa: E402
from kiana.sync.items import record_of  # noqa: E402
from kiana.sync.reconcile import Reconciler  # noqa: E402

ENV = {"KIANA_MESH_HEARTBEAT_MS": "2000"}  # production heartbeat; loopback, no mDNS
TARGET_BULK_PER_S = 5_000
TARGET_PROPAGATION_MEDIAN_S = 2.0
BATCH = 1000

FULL = {"blocks": 20_000, "trials": 50, "resyncs": 5}
QUICK = {"blocks": 2_000, "trials": 10, "resyncs": 3}


# -- helpers ------------------------------------------------------------------------------


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


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str, every: float = 0.002
):
    deadline = time.perf_counter() + timeout_s
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def line_of(block: Block) -> bytes:
    """A record exactly as the engine puts it in a ``B`` message."""
    return json.dumps(record_of(block), separators=(",", ":"), ensure_ascii=False).encode()


def thread_cpu(services: dict[str, MeshService]) -> dict[str, float]:
    """CPU seconds so far of the event-loop thread and of each service's store thread."""
    names = {threading.main_thread().native_id: "event loop (all services)"}
    for t in threading.enumerate():  # the sync engines' signature checkers (intake.py)
        if t.name.startswith("kiana-sync-verify") and t.native_id is not None:
            names[t.native_id] = "verify workers (all services)"
    for side, svc in services.items():
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
    return {
        k: {
            "cpu_seconds": round(after.get(k, 0.0) - before.get(k, 0.0), 3),
            "share_of_wall": round((after.get(k, 0.0) - before.get(k, 0.0)) / wall, 3),
        }
        for k in sorted(set(before) | set(after))
    }


class Watch:
    """Counts what a service's sync engine stores (``on_stored``, store thread) and what
    sync messages the service sends (``_send_core``; block sync by kind, the shared-state
    and ledger channels by name), with timestamps."""

    def __init__(self, svc: MeshService) -> None:
        self.svc = svc
        self.stored = 0
        self.last_stored = 0.0
        self.first_stored = 0.0
        self.stored_at: dict[str, float] = {}
        self.sent: Counter[str] = Counter()
        self.sent_bytes: Counter[str] = Counter()
        self.record_msgs_at: list[float] = []
        engine = svc.sync
        orig_stored = engine.on_stored

        def on_stored(blocks: list[Block], erased: list[str]) -> None:
            now = time.perf_counter()
            if not self.stored:
                self.first_stored = now
            self.stored += len(blocks)
            self.last_stored = now
            for b in blocks:
                self.stored_at[b.id] = now
            if orig_stored is not None:
                orig_stored(blocks, erased)

        engine.on_stored = on_stored
        orig_send = svc._send_core

        async def send_core(out: list[tuple[str, str, bytes]]) -> None:
            for _, channel, body in out:
                kind = body[:1].decode("ascii", "replace") if channel == "sync" else channel
                self.sent[kind] += 1
                self.sent_bytes[kind] += len(body)
                if kind == "B":
                    self.record_msgs_at.append(time.perf_counter())
            await orig_send(out)

        svc._send_core = send_core  # type: ignore[method-assign]

    def reset_counts(self) -> None:
        self.sent.clear()
        self.sent_bytes.clear()


class JobClock:
    """Wall time of every job on a service's store thread (``MeshService._run``), by what
    it runs: which work keeps the thread busy, and how long it sits idle."""

    def __init__(self, svc: MeshService) -> None:
        self.busy: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.active = True
        orig = svc._run

        async def timed_run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            target = fn.func if isinstance(fn, functools.partial) else fn
            label = getattr(target, "__qualname__", repr(target))

            def job() -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if self.active:
                        self.busy[label] += time.perf_counter() - t0
                        self.calls[label] += 1

            return await orig(job)

        svc._run = timed_run  # type: ignore[method-assign]

    def table(self, wall: float) -> dict[str, Any]:
        busy = sum(self.busy.values())
        jobs = {
            k: {"seconds": round(v, 3), "share_of_wall": round(v / wall, 3), "jobs": self.calls[k]}
            for k, v in sorted(self.busy.items(), key=lambda kv: -kv[1])
        }
        return {"busy_share": round(busy / wall, 3), "idle_seconds": round(wall - busy, 3),
                "jobs": jobs}  # fmt: skip


class FrameCount:
    """Message frames a service receives (``M``: sealed messages, ``A``: acks), and how many
    of the ``M`` frames were new (delivered) rather than copies sent again."""

    def __init__(self, svc: MeshService) -> None:
        self.frames: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.delivered = 0
        orig = svc.messenger.receive

        def receive(peer: str, frame: bytes, now: int) -> list[Any]:
            kind = frame[:1].decode("ascii", "replace")
            self.frames[kind] += 1
            self.bytes[kind] += len(frame)
            events = orig(peer, frame, now)
            self.delivered += sum(type(e).__name__ == "MessageReceived" for e in events)
            return events

        receive.__qualname__ = "Messenger.receive"
        svc.messenger.receive = receive  # type: ignore[method-assign]
        self.sent_m = 0
        self.sent_m_bytes = 0
        self.sent_unique: set[bytes] = set()
        orig_poll = svc.messenger.poll

        def poll(now: int) -> list[tuple[str, bytes]]:
            frames = orig_poll(now)
            for _, f in frames:
                if f[:1] == b"M":
                    self.sent_m += 1
                    self.sent_m_bytes += len(f)
                    self.sent_unique.add(f[:64])  # the header: message id, sender, recipient
            return frames

        poll.__qualname__ = "Messenger.poll"
        svc.messenger.poll = poll  # type: ignore[method-assign]

    def summary(self) -> dict[str, Any]:
        m = self.frames.get("M", 0)
        return {
            "message_frames": m,
            "ack_frames": self.frames.get("A", 0),
            "message_frame_bytes": self.bytes.get("M", 0),
            "new_messages": self.delivered,
            "copies_received_again": m - self.delivered,
            "message_frames_sent": self.sent_m,
            "message_frame_bytes_sent": self.sent_m_bytes,
            "copies_sent_again": self.sent_m - len(self.sent_unique),
        }


async def open_service(settings: Settings, seed: int) -> MeshService:
    node = await asyncio.to_thread(Node.open, settings)
    node.auto_embed = False  # sync is measured, not the embedding of what arrives
    svc = MeshService(node, settings, seed=seed)
    await svc.start()
    return svc


async def stop_service(svc: MeshService) -> None:
    await svc.stop()
    await asyncio.to_thread(svc.node.close)


async def outbox_count(svc: MeshService, peer: str) -> int:
    """Messages ``svc`` still holds for ``peer`` (not yet acknowledged)."""
    row = await svc._run(
        svc.node.store.db.read,
        lambda c: c.one("SELECT COUNT(*) FROM mesh_outbox WHERE peer = ?", (peer,)),
    )
    return int(row[0]) if row else 0


async def block_count(svc: MeshService) -> int:
    row = await svc._run(svc.node.store.db.read, lambda c: c.one("SELECT COUNT(*) FROM blocks"))
    return int(row[0]) if row else 0


def peer_state(svc: MeshService, device: str) -> Any:
    return svc.sync.peers.get(device)


def in_sync(svc: MeshService, device: str) -> bool:
    for p in svc.sync.status():
        if p["device"] == device:
            return bool(p["in_sync"])
    return False


def link_of(svc: MeshService, device: str) -> Any:
    peer = svc.peers.get(device)
    return peer.link if peer is not None else None


def device_id_of(settings: Settings) -> str:
    with Node.open(settings) as node:
        return node.device_id


# -- the source device: in this process, or in a process of its own ---------------------------


class LocalSource:
    """Device A as a ``MeshService`` in this process (the old setup: both devices share one
    interpreter, one event loop and one GIL)."""

    mode = "in-process"

    def __init__(self, svc: MeshService) -> None:
        self.svc = svc
        self.device = svc.node.device_id
        self._watch: Watch | None = None
        self._jobs: JobClock | None = None
        self._frames: FrameCount | None = None

    async def watch(self) -> None:
        self._watch, self._jobs = Watch(self.svc), JobClock(self.svc)
        self._frames = FrameCount(self.svc)

    async def connect(self, port: int, expect: str) -> None:
        await self.svc.connect("127.0.0.1", port, expect=expect)

    async def report(self, wall: float) -> dict[str, Any]:
        assert self._watch and self._jobs and self._frames
        self._jobs.active = False
        return {
            "sent": dict(self._watch.sent),
            "sent_bytes": dict(self._watch.sent_bytes),
            "frames": self._frames.summary(),
            "jobs": self._jobs.table(wall),
        }

    async def in_sync(self, device: str) -> bool:
        return in_sync(self.svc, device)

    async def outbox(self, device: str) -> int:
        return await outbox_count(self.svc, device)

    async def stop(self) -> None:
        await stop_service(self.svc)


class RemoteSource:
    """Device A in a child process (``sync_source.py``), as two devices are: the receiver
    measured here has this interpreter to itself. Commands go over the child's stdin."""

    mode = "two-process"

    def __init__(self, proc: asyncio.subprocess.Process, device: str, port: int) -> None:
        self.proc = proc
        self.device = device
        self.port = port
        self._lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, home: Path, seed: int) -> RemoteSource:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "sync_source.py"), "--home", str(home), "--seed",
            str(seed), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            ready = json.loads(line or b"{}")
        except (TimeoutError, ValueError):
            ready = {}
        if not ready.get("ready"):
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the source process did not start: {ready}")
        return cls(proc, str(ready["device"]), int(ready["port"]))

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        out: dict[str, Any] = json.loads(line or b"{}")
        if not out.get("ok"):
            raise RuntimeError(f"source process, {op}: {out.get('error', 'no answer')}")
        return out

    async def watch(self) -> None:
        await self.call("watch")

    async def connect(self, port: int, expect: str) -> None:
        await self.call("connect", port=port, expect=expect)

    async def report(self, wall: float) -> dict[str, Any]:
        return await self.call("report", wall=wall)

    async def in_sync(self, device: str) -> bool:
        return bool((await self.call("in_sync", device=device))["value"])

    async def outbox(self, device: str) -> int:
        return int((await self.call("outbox", device=device))["value"])

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError, ConnectionError, TimeoutError):
            await self.call("stop")
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


Source = LocalSource | RemoteSource


# -- 0. corpus and baselines ------------------------------------------------------------------


def build_corpus(settings: Settings, n: int, seed: int) -> dict[str, Any]:
    """Sign ``n`` blocks as device A and store them in A's home, in batches of 1000."""
    rng = random.Random(seed)
    corpus = bench_store.Corpus(rng, bench_store.Vocabulary.build(rng))
    with Node.open(settings) as node:
        node.auto_embed = False
        t0 = time.perf_counter()
        blocks = [bench_store.sign(node, corpus.draft(False)) for _ in range(n)]
        t_sign = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            node.store.put_many(blocks[i : i + BATCH], verified=True)
        t_put = time.perf_counter() - t0
        verify_key = bytes(node.keys.signing.verify_key)
    lines = [line_of(b) for b in blocks]
    return {
        "blocks": blocks,
        "lines": lines,
        "verify_key": verify_key,
        "sign_seconds": t_sign,
        "insert_seconds": t_put,
        "json_bytes_per_block": sum(len(x) + 1 for x in lines) / n,
        "private_share": sum(b.scope == "private" for b in blocks) / n,
    }


def raw_verify(blocks: list[Block], verify_key: bytes) -> float:
    """Seconds for raw PyNaCl verification of the signed messages (domain ‖ sha256)."""
    from nacl.signing import VerifyKey

    vk = VerifyKey(verify_key)
    msgs = [BLOCK_DOMAIN + bytes.fromhex(b.id) for b in blocks]
    sigs = [bytes.fromhex(b.sig) for b in blocks]
    t0 = time.perf_counter()
    for m, s in zip(msgs, sigs, strict=True):
        vk.verify(m, s)
    return time.perf_counter() - t0


def store_path(settings: Settings, lines: list[bytes]) -> dict[str, float]:
    """The receiving side with no network: parse each JSON line, then ``put_many`` with
    verification (id + signature) into an empty device of the same mind, 1000 per txn."""
    with Node.open(settings) as node:
        node.auto_embed = False
        store = node.store
        parse = 0.0
        put = 0.0
        for i in range(0, len(lines), BATCH):
            t0 = time.perf_counter()
            blocks = [parse_block(loads_record(x)["record"]) for x in lines[i : i + BATCH]]
            t1 = time.perf_counter()
            store.put_many(blocks)  # verified=False: the store verifies
            put += time.perf_counter() - t1
            parse += t1 - t0
        count = store.db.read(lambda c: c.one("SELECT COUNT(*) FROM blocks"))[0]
    if count != len(lines):
        raise RuntimeError(f"store baseline stored {count} of {len(lines)}")
    return {"seconds": parse + put, "parse_seconds": parse, "put_verify_seconds": put}


# -- 1. bulk sync ----------------------------------------------------------------------------


async def bulk_sync(
    a: Source, b: MeshService, n: int, start: float, label: str = "B"
) -> dict[str, Any]:
    """``b`` is empty; A dials it; seconds until ``b`` has stored all ``n`` blocks. A runs in
    this process or in its own (``a.mode``); ``b`` is measured here either way."""
    adev, bdev = a.device, b.node.device_id
    wb, jb, fb = Watch(b), JobClock(b), FrameCount(b)
    await a.watch()
    timeline: list[dict[str, float]] = []
    here = {"A": a.svc, label: b} if isinstance(a, LocalSource) else {label: b}
    cpu0 = thread_cpu(here)
    t0 = time.perf_counter()
    await a.connect(b.port, bdev)
    t_link = time.perf_counter()
    next_sample = t0
    while wb.stored < n:
        now = time.perf_counter()
        if now >= next_sample:
            timeline.append({"t": round(now - t0, 2), "stored": wb.stored})
            next_sample = now + 0.5
        if now - t0 > 900:
            raise RuntimeError(f"bulk sync: {wb.stored} of {n} after 900 s")
        await asyncio.sleep(0.005)
    t_end = wb.last_stored
    wall = t_end - t0
    cpu = cpu_share(cpu0, thread_cpu(here), wall)
    jb.active = False
    rep = await a.report(wall)
    if "cpu" in rep:  # two processes: each one's threads
        cpu = {f"{label} process: {k}": v for k, v in cpu.items()} | {
            f"A process: {k}": v for k, v in rep["cpu"].items()
        }
    frames_b, frames_a = fb.summary(), rep["frames"]
    link_b = link_of(b, adev)
    wire_out, wire_in = link_b.bytes_in, link_b.bytes_out  # A → B, B → A
    timeline.append({"t": round(t_end - t0, 2), "stored": wb.stored})

    async def both_in_sync() -> bool:
        return in_sync(b, adev) and await a.in_sync(bdev)

    await wait_for(both_in_sync, 120, "both sides in sync", every=0.02)
    t_in_sync = time.perf_counter() - t0

    async def drained() -> bool:  # everything A and B sent each other is acknowledged
        return not await outbox_count(b, adev) and not await a.outbox(bdev)

    await wait_for(drained, 120, "outboxes to drain", every=0.02)
    t_acked = time.perf_counter() - t0
    stored = await block_count(b)
    sb = peer_state(b, adev)
    if stored != n or sb.rejected:
        raise RuntimeError(f"bulk sync: {label} holds {stored} of {n}, {sb.rejected} rejected")
    initiator = "A" if adev < bdev else label
    out = {
        "blocks": n,
        "mode": a.mode,
        "initiator": initiator,
        "link_seconds": t_link - t0,
        "seconds": wall,
        "blocks_per_s": n / wall,
        "first_block_stored_s": wb.first_stored - t0,
        "store_phase_blocks_per_s": n / max(1e-9, t_end - wb.first_stored),
        "in_sync_both_sides_s": t_in_sync,
        "outboxes_empty_s": t_acked,
        "stored": stored,
        "rejected": sb.rejected,
        "wire_bytes_a_to_b_at_done": wire_out,
        "wire_bytes_b_to_a_at_done": wire_in,
        "wire_bytes_per_block": (wire_out + wire_in) / n,
        "wire_bytes_a_to_b_per_block": wire_out / n,
        "sync_body_bytes_a_to_b": sb.bytes_in,
        "sync_body_bytes_b_to_a": sb.bytes_out,
        "sync_body_bytes_per_block": (sb.bytes_in + sb.bytes_out) / n,
        "sync_messages_by_a": rep["sent"],
        "sync_message_bytes_by_a": rep["sent_bytes"],
        "sync_messages_by_b": dict(wb.sent),
        "sync_message_bytes_by_b": dict(wb.sent_bytes),
        "thread_cpu": cpu,
        "receiver": label,
        "store_jobs": {"A": rep["jobs"], "B": jb.table(wall)},
        "frames_received": {"B": frames_b, "A": frames_a},
        # Frames A's pump handed to the link again (same envelope): the retry timer (full
        # jitter: 1 ms to 10 s after the first try) fired before the ack came back.
        "copies_sent_again": frames_a["copies_sent_again"],
        "timeline": timeline,
    }
    log(
        f"  {label} ({a.mode}): {n:,} blocks in {wall:.1f} s ({n / wall:,.0f}/s); first stored after "
        f"{out['first_block_stored_s']:.2f} s; {out['wire_bytes_per_block']:.0f} B/block on "
        f"the link; both in sync after {t_in_sync:.1f} s; {label}'s store thread busy "
        f"{jb.table(wall)['busy_share']:.0%}; {out['copies_sent_again']} message "
        f"copies sent again by A",
        start,
    )
    return out


async def _bulk_once(
    settings_a: Settings, settings_b: Settings, mode: str, seed: int, n: int, start: float
) -> dict[str, Any]:
    """One bulk run with a freshly started A (``mode``: in this process or its own) and B."""
    a: Source
    if mode == "two-process":
        a = await RemoteSource.spawn(settings_a.home, seed)
    else:
        a = LocalSource(await open_service(settings_a, seed=seed))
    b: MeshService | None = None
    try:
        b = await open_service(settings_b, seed=seed + 1)
        return await bulk_sync(a, b, n, start)
    finally:
        await a.stop()  # first: B's end of the link then closes as a peer's would
        if b is not None:
            await stop_service(b)


def mode_summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: blocks/s of every run in each mode, medians, two-process / in-process."""
    out: dict[str, dict[str, Any]] = {}
    for case in dict.fromkeys(r["case"] for r in runs):
        row: dict[str, Any] = {}
        for mode in ("in-process", "two-process"):
            rates = [
                round(r["blocks_per_s"]) for r in runs if r["case"] == case and r["mode"] == mode
            ]
            firsts = [round(r["first_block_stored_s"], 2) for r in runs
                      if r["case"] == case and r["mode"] == mode]  # fmt: skip
            if rates:
                row[mode] = rates
                row[f"{mode} median"] = round(statistics.median(rates))
                row[f"{mode} first block stored s"] = firsts
        if "in-process median" in row and "two-process median" in row:
            row["ratio two/in"] = round(row["two-process median"] / row["in-process median"], 2)
        out[case] = row
    return out


async def _outboxes_empty(a: MeshService, b: MeshService) -> bool:
    """Everything ``a`` and ``b`` sent each other is acknowledged."""
    if await outbox_count(a, b.node.device_id):
        return False
    return not await outbox_count(b, a.node.device_id)


# -- 2. profile ------------------------------------------------------------------------------------


def _enable(prof: cProfile.Profile) -> None:
    prof.enable()


def _disable(prof: cProfile.Profile) -> None:
    prof.disable()


def top_functions(prof: cProfile.Profile, limit: int = 18) -> dict[str, Any]:
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = f"{Path(file).name}:{line}({name})" if file != "~" else name
        rows.append((short, nc, tt, ct))
    by_tt = sorted(rows, key=lambda r: -r[2])[:limit]
    by_ct = sorted(rows, key=lambda r: -r[3])[: limit + 12]
    fmt = lambda r: {  # noqa: E731
        "function": r[0],
        "calls": r[1],
        "self_s": round(r[2], 3),
        "cum_s": round(r[3], 3),
        "self_share": round(r[2] / total, 3) if total else 0.0,
        "cum_share": round(r[3] / total, 3) if total else 0.0,
    }
    return {
        "profiled_seconds": round(total, 3),
        "by_self_time": [fmt(r) for r in by_tt],
        "by_cumulative": [fmt(r) for r in by_ct],
    }


GROUPS = {
    # store thread, receiving side
    "intake._on_records (parse + id check + admit + put_batches)": "intake.py:{}(_on_records)",
    "  parse_lines (json.loads + parse_block + canonical JSON + sha256)": "intake.py:{}(parse_lines)",
    "  check_signatures (Ed25519, inline: small messages)": "intake.py:{}(check_signatures)",
    "  parse_block": "codec.py:{}(parse_block)",
    "  loads_record (json.loads)": "codec.py:{}(loads_record)",
    "  BlockStore.put_batches (one transaction per message)": "blocks.py:{}(put_batches)",
    "  waiting for the verify thread (Future.result)": "_base.py:{}(result)",
    "engine._push_new (scan + fetch_records after each B message)": "engine.py:{}(_push_new)",
    "  items.fetch_records": "items.py:{}(fetch_records)",
    "  items.scan": "items.py:{}(scan)",
    "engine._send_records (serialise pushed records)": "engine.py:{}(_send_records)",
    "engine._send_queued (read + serialise a burst of requested records)": "engine.py:{}(_send_queued)",
    "engine._on_want": "engine.py:{}(_on_want)",
    "Messenger.send (seal + outbox INSERT)": "messenger.py:{}(send)",
    "Messenger.receive (open + inbox INSERT)": "messenger.py:{}(receive)",
    "Messenger.poll (outbox due)": "messenger.py:{}(poll)",
    "Messenger.consume (inbox DELETE)": "messenger.py:{}(consume)",
    "SqlMessageStore.remove_acked": "message_store_sql.py:{}(remove_acked)",
    "Link.send (Noise encrypt)": "link.py:{}(send)",
    "Link.receive_frame (Noise decrypt)": "link.py:{}(receive_frame)",
}


def grouped(prof: cProfile.Profile) -> dict[str, dict[str, float]]:
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    out: dict[str, dict[str, float]] = {}
    for label, pattern in GROUPS.items():
        file_name, func = pattern.split(":{}")
        func = func.strip("()")
        cum = calls = 0.0
        for (file, _line, name), (_cc, nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if Path(file).name == file_name and name == func:
                cum += ct
                calls += nc
        if calls:
            out[label] = {
                "calls": int(calls),
                "cum_s": round(cum, 3),
                "share": round(cum / total, 3) if total else 0.0,
            }
    return out


async def profiled_bulk(
    a: MeshService, settings_e: Settings, n: int, start: float
) -> dict[str, Any]:
    e = await open_service(settings_e, seed=5)
    profs = {"A store thread": cProfile.Profile(), "E store thread": cProfile.Profile()}
    loop_prof = cProfile.Profile()
    try:
        await a._run(_enable, profs["A store thread"])
        await e._run(_enable, profs["E store thread"])
        loop_prof.enable()
        # A now also holds the propagation trials' facts: E must get everything.
        res = await bulk_sync(LocalSource(a), e, await block_count(a), start, label="E")
        loop_prof.disable()
        await a._run(_disable, profs["A store thread"])
        await e._run(_disable, profs["E store thread"])
    finally:
        loop_prof.disable()
        adev = a.node.device_id
        peer = e.peers.get(adev)
        if peer is not None and peer.link is not None:
            peer.link.close("benchmark: profile done")
            await e._flush(peer)
        await stop_service(e)
    profs["event loop"] = loop_prof
    res["profile"] = {k: top_functions(p) for k, p in profs.items()}
    res["profile_groups"] = {k: grouped(p) for k, p in profs.items()}
    return res


# -- 3. reconciliation in sync --------------------------------------------------------------------


def memory_reconcile(init: MeshService, resp: MeshService) -> dict[str, Any]:
    """The same exchange with no network, store or messenger: Reconcilers on the engines'
    own item sets (the CPU floor of a resync)."""
    t0 = time.perf_counter()
    ri = Reconciler(init.sync._full, initiator=True)
    rr = Reconciler(resp.sync._full, initiator=False)
    msg: bytes | None = ri.initiate()
    to_resp = to_init = rounds = 0
    while msg is not None:
        rounds += 1
        to_resp += len(msg)
        reply = rr.reconcile(msg)
        to_init += len(reply or b"")
        msg = ri.reconcile(reply or b"")
    return {
        "seconds": time.perf_counter() - t0,
        "round_trips": rounds,
        "bytes_to_responder": to_resp,
        "bytes_to_initiator": to_init,
        "have": len(ri.have),
        "need": len(ri.need),
    }


async def resync_in_sync(a: MeshService, b: MeshService, k: int, start: float) -> dict[str, Any]:
    adev, bdev = a.node.device_id, b.node.device_id
    init, resp = (a, b) if adev < bdev else (b, a)
    idev, rdev = init.node.device_id, resp.node.device_id
    trials = []
    wi, wr = Watch(init), Watch(resp)
    for _ in range(k):
        await wait_for(lambda: _outboxes_empty(a, b), 60, "outboxes to drain")
        si, sr = peer_state(init, rdev), peer_state(resp, idev)
        li = link_of(init, rdev)
        b0 = (si.bytes_out, si.bytes_in, li.bytes_out, li.bytes_in)
        wi.reset_counts()
        wr.reset_counts()
        si.last_reconciled = None
        sr.last_reconciled = None
        si.next_resync = 0
        t0 = time.perf_counter()
        await init._send_core(await init._run(init._core.tick, now_ms()))
        await wait_for(
            lambda si=si, sr=sr: si.last_reconciled is not None and sr.last_reconciled is not None,
            60,
            "the resync to finish",
        )
        t = time.perf_counter() - t0
        await wait_for(lambda: _outboxes_empty(a, b), 60, "outboxes to drain")
        t_acked = time.perf_counter() - t0
        trials.append(
            {
                "seconds": t,
                "acked_seconds": t_acked,
                "round_trips": wi.sent.get("R", 0),
                "sync_bytes_to_responder": si.bytes_out - b0[0],
                "sync_bytes_to_initiator": si.bytes_in - b0[1],
                "messages_by_initiator": dict(wi.sent),
                "messages_by_responder": dict(wr.sent),
                "wire_bytes_to_responder": li.bytes_out - b0[2],
                "wire_bytes_to_initiator": li.bytes_in - b0[3],
                "ahead": si.ahead,
                "behind": si.behind,
            }
        )
        await asyncio.sleep(0.3)
    mem = [memory_reconcile(init, resp) for _ in range(k)]
    times = [t["seconds"] for t in trials]
    out = {
        "items": len(init.sync._full),
        "resyncs": k,
        "resync_interval_s": RESYNC_MS / 1000,
        "time": summary_ms(times),
        "acked": summary_ms([t["acked_seconds"] for t in trials]),
        "trials": trials,
        "memory": {
            "time": summary_ms([m["seconds"] for m in mem]),
            "round_trips": mem[0]["round_trips"],
            "bytes_to_responder": mem[0]["bytes_to_responder"],
            "bytes_to_initiator": mem[0]["bytes_to_initiator"],
            "differences": mem[0]["have"] + mem[0]["need"],
        },
        "naive_id_list_bytes": 32 * len(init.sync._full),
    }
    t0 = trials[0]
    log(
        f"  resync at {out['items']:,} items in sync: median {out['time']['median_ms']:.0f} ms, "
        f"{t0['round_trips']} round trips, sync bytes {t0['sync_bytes_to_responder']:,} → / "
        f"{t0['sync_bytes_to_initiator']:,} ←, on the link {t0['wire_bytes_to_responder']:,} → / "
        f"{t0['wire_bytes_to_initiator']:,} ←; in memory "
        f"{out['memory']['time']['median_ms']:.1f} ms",
        start,
    )
    return out


# -- 4. propagation -------------------------------------------------------------------------------


async def propagation(
    a: MeshService, b: MeshService, settings_a: Settings, trials: int, start: float
) -> dict[str, Any]:
    """A separate Node on A's home writes a fact; seconds until B has stored it."""
    wa, wb = Watch(a), Watch(b)
    writer = await asyncio.to_thread(Node.open, settings_a)
    writer.auto_embed = False
    rng = random.Random(7)
    rows = []
    try:
        for i in range(trials):
            await asyncio.sleep(rng.uniform(0.1, 0.6))  # a random phase of the sync tick
            pushes = len(wa.record_msgs_at)
            text = (
                f"Propagation trial {i}: the parcel for flat {rng.randrange(10**6)} is at the door."
            )
            t0 = time.perf_counter()
            fact = await asyncio.to_thread(writer.remember, text)
            t_written = time.perf_counter()
            block_id = fact.block.id
            await wait_for(lambda block_id=block_id: block_id in wb.stored_at, 30, "the fact on B")
            t_stored = wb.stored_at[block_id]
            t_push = wa.record_msgs_at[pushes] if len(wa.record_msgs_at) > pushes else t_stored
            rows.append(
                {
                    "seconds": t_stored - t0,
                    "write_s": t_written - t0,
                    "until_pushed_s": t_push - t_written,
                    "push_to_stored_s": t_stored - t_push,
                    "id": block_id,
                }
            )
    finally:
        await asyncio.to_thread(writer.close)
    ids = [r["id"] for r in rows]

    def present(c: Any) -> int:
        marks = ",".join("?" * len(ids))
        return int(c.one(f"SELECT COUNT(*) FROM blocks WHERE id IN ({marks})", ids)[0])

    found = await b._run(b.node.store.db.read, present)
    if found != len(ids):
        raise RuntimeError(f"propagation: {found} of {len(ids)} facts in B's store")
    out = {
        "trials": trials,
        "sync_tick_s": SYNC_TICK_S,
        "latency": summary_ms([r["seconds"] for r in rows]),
        "write": summary_ms([r["write_s"] for r in rows]),
        "until_pushed": summary_ms([r["until_pushed_s"] for r in rows]),
        "push_to_stored": summary_ms([r["push_to_stored_s"] for r in rows]),
        "found_in_b_store": found,
        "rows": rows,
    }
    lat = out["latency"]
    log(
        f"  propagation: median {lat['median_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms "
        f"(waiting for the tick: median {out['until_pushed']['median_ms']:.0f} ms; push → "
        f"stored on B: median {out['push_to_stored']['median_ms']:.1f} ms)",
        start,
    )
    return out


# -- environment and report ----------------------------------------------------------------------


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

    base = res.get("baselines")
    for how, bulk in (res.get("bulk_runs") or {}).items():
        if not base:
            break
        n = bulk["blocks"]
        r = bulk["blocks_per_s"]
        ok = "met" if r >= TARGET_BULK_PER_S else "MISSED"
        v, s = base["raw_verify_per_s"], base["store_path_per_s"]
        add(f"bulk sync {n:,} blocks A → empty B, {how}: blocks/s", f"{r:,.0f}",
            "raw Ed25519 verify (PyNaCl)", f"{v:,.0f}", f"{r / v:.2f}×",
            f"≥ {TARGET_BULK_PER_S:,} ({ok})")  # fmt: skip
        add("", "", "parse + put_many(verified=False), no network", f"{s:,.0f}", f"{r / s:.2f}×")
        add("  wall: connect → last block stored on B", f"{bulk['seconds']:.2f} s",
            "", "", "", f"first block stored after {bulk['first_block_stored_s']:.2f} s")  # fmt: skip
        add("  both sides report in sync / outboxes empty",
            f"{bulk['in_sync_both_sides_s']:.2f} / {bulk['outboxes_empty_s']:.2f} s")  # fmt: skip
        add("  bytes on the link per block (both ways)", f"{bulk['wire_bytes_per_block']:,.0f} B",
            "record as JSON line", f"{base['json_bytes_per_block']:,.0f} B",
            f"{bulk['wire_bytes_per_block'] / base['json_bytes_per_block']:.2f}×")  # fmt: skip
        add("  sync message bodies per block (both ways)",
            f"{bulk['sync_body_bytes_per_block']:,.0f} B")  # fmt: skip
        add("  sync messages A→B / B→A (by kind)",
            " ".join(f"{k}:{v}" for k, v in sorted(bulk["sync_messages_by_a"].items())) + " / "
            + " ".join(f"{k}:{v}" for k, v in sorted(bulk["sync_messages_by_b"].items())))  # fmt: skip
        add("  message copies A sent again (retry timer before the ack)",
            f"{bulk['copies_sent_again']}", "", "", "",
            f"{bulk['frames_received']['A']['message_frames_sent']} frames for "
            f"{bulk['frames_received']['B']['new_messages']} messages")  # fmt: skip
        cpu = bulk["thread_cpu"]
        add("  CPU / wall by thread",
            ", ".join(f"{k.replace(' thread', '').replace(' (all services)', '')} "
                      f"{v['share_of_wall']:.0%}" for k, v in cpu.items()))  # fmt: skip
        jobs = bulk["store_jobs"]["B"]
        top = list(jobs["jobs"].items())[:3]
        add("  B store thread: busy share of wall; top jobs",
            f"{jobs['busy_share']:.0%}", "", "", "",
            "; ".join(f"{k} {v['seconds']:.2f} s ({v['jobs']})" for k, v in top))  # fmt: skip
        handled = jobs["jobs"].get("NodeCore.handle") or jobs["jobs"].get("SyncEngine.receive")
        per_block = (handled or {}).get("seconds", 0.0) / n
        add("  sync message handling on B's store thread, per block", f"{per_block * 1e6:.0f} µs",
            "parse + put_many(verified=False)", f"{1e6 / s:.0f} µs", f"{per_block * s:.2f}×")  # fmt: skip
    for case, m in (res.get("bulk_modes") or {}).items():
        for mode in ("two-process", "in-process"):
            if mode in m:
                med = m[f"{mode} median"]
                ok = "met" if med >= TARGET_BULK_PER_S else "MISSED"
                add(f"bulk {case}, A {mode}: median blocks/s ({len(m[mode])} runs)", f"{med:,}",
                    "", "", "", f"≥ {TARGET_BULK_PER_S:,} ({ok}); runs {m[mode]}")  # fmt: skip
        if "ratio two/in" in m:
            add(f"  {case}: two processes / one process", f"{m['ratio two/in']:.2f}×")
    if base:
        add("  store path alone: parse / put_many+verify share",
            f"{base['store_parse_share']:.0%} / {1 - base['store_parse_share']:.0%}")  # fmt: skip
    prof = res.get("profiled")
    if prof:
        add("profiled bulk run (cProfile on, slower)", f"{prof['blocks_per_s']:,.0f} blocks/s")
        for thread, groups in prof["profile_groups"].items():
            total = prof["profile"][thread]["profiled_seconds"]
            for name, g in list(groups.items()):
                if g["share"] >= 0.03:
                    add(f"  {thread}: {name}", f"{g['cum_s']:.2f} s", "", "", "",
                        f"{g['share']:.0%} of {total:.1f} s profiled, {g['calls']:,} calls")  # fmt: skip
    rec = res.get("resync")
    if rec:
        t = rec["trials"][0]
        mem = rec["memory"]
        add(f"resync when in sync ({rec['items']:,} items), median",
            f"{rec['time']['median_ms']:.0f} ms", "same Reconcilers in memory",
            f"{mem['time']['median_ms']:.1f} ms",
            f"{rec['time']['median_ms'] / mem['time']['median_ms']:.0f}×",
            f"every {rec['resync_interval_s']:.0f} s")  # fmt: skip
        add("  round trips", f"{t['round_trips']}", "in memory", f"{mem['round_trips']}")
        add("  sync bytes → responder / → initiator",
            f"{t['sync_bytes_to_responder']:,} / {t['sync_bytes_to_initiator']:,} B",
            "in memory", f"{mem['bytes_to_responder']:,} / {mem['bytes_to_initiator']:,} B")  # fmt: skip
        add("  bytes on the link → / ←",
            f"{t['wire_bytes_to_responder']:,} / {t['wire_bytes_to_initiator']:,} B",
            "all ids, naive", f"{rec['naive_id_list_bytes']:,} B")  # fmt: skip
    prop = res.get("propagation")
    if prop:
        lat = prop["latency"]
        ok = "met" if lat["median_ms"] / 1000 <= TARGET_PROPAGATION_MEDIAN_S else "MISSED"
        add(f"propagation: remember on A → stored on B, median ({prop['trials']} trials)",
            f"{lat['median_ms']:.0f} ms", "", "", "",
            f"≤ {TARGET_PROPAGATION_MEDIAN_S:.0f} s ({ok})")  # fmt: skip
        add("  p95 / max", f"{lat['p95_ms']:.0f} / {lat['max_ms']:.0f} ms")
        add("  remember() on A (separate Node), median", f"{prop['write']['median_ms']:.1f} ms")
        add("  written → pushed by A's sync tick, median / p95",
            f"{prop['until_pushed']['median_ms']:.0f} / {prop['until_pushed']['p95_ms']:.0f} ms",
            "", "", "", f"tick every {prop['sync_tick_s'] * 1000:.0f} ms")  # fmt: skip
        add("  pushed → stored on B, median / p95",
            f"{prop['push_to_stored']['median_ms']:.1f} / "
            f"{prop['push_to_stored']['p95_ms']:.1f} ms")  # fmt: skip
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
    Console(width=180).print(table)


async def run(args: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    start = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kiana-bench-sync-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n = sizes["blocks"]
    result: dict[str, Any] = {
        "machine": machine_info(),
        "params": {
            **sizes,
            "batch_bytes": BATCH_BYTES,
            "want_ids": WANT_IDS,
            "sync_tick_s": SYNC_TICK_S,
            "resync_ms": RESYNC_MS,
            "heartbeat_ms": int(ENV["KIANA_MESH_HEARTBEAT_MS"]),
            "auto_embed": False,
            "profile": not args.no_profile,
        },
    }
    try:
        # Which side starts reconciling depends on the device ids (the smaller one does), and
        # the ids are random: make several empty devices and pick one on each side of A.
        # (make_mind pairs at most five devices a minute: the pairing host's rate limit.)
        empties = ["x1", "x2", "x3", "x4"]
        names = ["a", "c", *empties]
        log(f"one mind, one person: a (source), c (store baseline), {len(empties)} empty", start)
        homes = await asyncio.to_thread(make_mind, workdir, names, **ENV)
        # A second empty store for the baseline after the transfers: a copy of c's home
        # (no network there, so a shared device id does not matter).
        await asyncio.to_thread(shutil.copytree, workdir / "c", workdir / "d")
        homes["d"] = quiet_settings(workdir / "d", **ENV)
        ids = {name: await asyncio.to_thread(device_id_of, homes[name]) for name in names}
        lower = [x for x in empties if ids[x] < ids["a"]]
        higher = [x for x in empties if ids[x] > ids["a"]]
        runs: list[tuple[str, str]] = []
        if lower:
            runs.append(("empty device initiates", lower.pop()))
        if higher:
            runs.append(("source initiates", higher.pop()))
        spare = (lower + higher)[0]
        log(f"signing and storing {n:,} blocks on A", start)
        corpus = await asyncio.to_thread(build_corpus, homes["a"], n, args.seed)
        blocks, lines = corpus["blocks"], corpus["lines"]
        log(f"  signed in {corpus['sign_seconds']:.1f} s, stored in "
            f"{corpus['insert_seconds']:.1f} s; {corpus['json_bytes_per_block']:.0f} B/line", start)  # fmt: skip
        log("baselines before: raw Ed25519 verify, parse + put_many(verified=False)", start)
        v1 = raw_verify(blocks, corpus["verify_key"])
        s1 = await asyncio.to_thread(store_path, homes["c"], lines)

        # Each bulk run gets a fresh copy of a still empty device (same id, so the same
        # side of A's; another messenger seed) and a freshly started A, in this process or
        # in its own; the modes alternate which goes first from case to case.
        for _how, name in runs:
            await asyncio.to_thread(shutil.copytree, workdir / name, workdir / f"{name}-empty")
        modes = ["two-process", "in-process"] if args.mode == "both" else [args.mode]
        result["bulk_runs"] = {}
        result["bulk_all"] = []
        seed = 10
        last = ""
        for rnd in range(args.bulk_repeats):
            for i, (how, name) in enumerate(runs):
                order = modes if (rnd + i) % 2 == 0 else modes[::-1]
                for mode in order:
                    seed += 2
                    home = workdir / f"{name}-{mode}-{rnd}"
                    await asyncio.to_thread(shutil.copytree, workdir / f"{name}-empty", home)
                    homes[home.name] = quiet_settings(home, **ENV)
                    log(f"bulk sync: {n:,} blocks A → empty device ({how}; A {mode})", start)
                    res = await _bulk_once(homes["a"], homes[home.name], mode, seed, n, start)
                    res["case"] = how
                    res["round"] = rnd
                    result["bulk_all"].append(res)
                    result["bulk_runs"].setdefault(f"{how}, {mode}", res)
                    last = home.name
        result["bulk_modes"] = mode_summary(result["bulk_all"])
        for how, m in result["bulk_modes"].items():
            log(f"  {how}: " + ", ".join(f"{k} {v}" for k, v in m.items()), start)
        # The other sections run in one process, as before, with the last receiver.
        a = await open_service(homes["a"], seed=1)
        # (a seed of its own: one it ran with before would repeat its message ids, which A
        # would take for copies of messages it already has)
        b: MeshService | None = await open_service(homes[last], seed=seed + 3)
        try:
            assert b is not None
            await a.connect("127.0.0.1", b.port, expect=b.node.device_id)
            adev, bdev = a.node.device_id, b.node.device_id
            await wait_for(lambda: in_sync(a, bdev) and in_sync(b, adev), 120, "A and B in sync")
            log("baselines after", start)
            v2 = raw_verify(blocks, corpus["verify_key"])
            s2 = await asyncio.to_thread(store_path, homes["d"], lines)
            result["baselines"] = {
                "raw_verify_seconds": [v1, v2],
                "raw_verify_per_s": 2 * n / (v1 + v2),
                "store_path_seconds": [s1["seconds"], s2["seconds"]],
                "store_path_per_s": 2 * n / (s1["seconds"] + s2["seconds"]),
                "store_path_runs": [s1, s2],
                "store_parse_share": (s1["parse_seconds"] + s2["parse_seconds"])
                / (s1["seconds"] + s2["seconds"]),
                "json_bytes_per_block": corpus["json_bytes_per_block"],
                "private_share": corpus["private_share"],
                "corpus_sign_seconds": corpus["sign_seconds"],
                "corpus_insert_seconds": corpus["insert_seconds"],
            }
            bl = result["baselines"]
            log(f"  raw verify {bl['raw_verify_per_s']:,.0f}/s, store path "
                f"{bl['store_path_per_s']:,.0f}/s", start)  # fmt: skip
            log(f"resync when in sync: {sizes['resyncs']} times", start)
            result["resync"] = await resync_in_sync(a, b, sizes["resyncs"], start)
            log(f"propagation: {sizes['trials']} trials", start)
            result["propagation"] = await propagation(a, b, homes["a"], sizes["trials"], start)
            if not args.no_profile:
                # B goes first: with B running, E would also link to B (WebRTC, signalled
                # through A) and fetch every block from both peers at once.
                await stop_service(b)
                b = None
                log("profiled bulk sync: A → another empty device E (cProfile)", start)
                result["profiled"] = await profiled_bulk(a, homes[spare], n, start)
        finally:
            for svc in (b, a):
                if svc is None:
                    continue
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
    ap.add_argument("--quick", action="store_true", help="small sizes (about 30 s)")
    ap.add_argument("--blocks", type=int, help="blocks on A for the bulk sync (20000)")
    ap.add_argument("--trials", type=int, help="propagation trials (50)")
    ap.add_argument("--resyncs", type=int, help="forced resyncs when in sync (5)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled bulk run")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (keys are fresh each run)")
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/sync.json)")
    ap.add_argument("--workdir", help="where the homes live (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument(
        "--mode",
        choices=("both", "two-process", "in-process"),
        default="both",
        help="the source device A in its own process (as devices are), in this one (the old "
        "setup: one GIL for both), or both in turn for each bulk case (default)",
    )
    ap.add_argument("--bulk-repeats", type=int, default=1, help="bulk runs per case and mode (1)")
    args = ap.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key, opt in (("blocks", args.blocks), ("trials", args.trials), ("resyncs", args.resyncs)):
        if opt is not None:
            sizes[key] = opt
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run(args, sizes))
    rows = build_rows(result)
    result["table"] = rows
    m = result["machine"]
    title = (
        f"KI_ana sync benchmark — loopback TCP, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"SQLite {m['sqlite']}, {m['date']}{' (quick)' if args.quick else ''}"
    )
    print_table(title, rows)
    quick = args.quick or sizes["blocks"] != FULL["blocks"]
    default = Path(tempfile.gettempdir()) / "sync-quick.json" if quick else None
    out = args.out or default or ROOT / "results" / "sync.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
