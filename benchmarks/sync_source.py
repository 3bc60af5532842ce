"""Device A of ``bench_sync.py`` in a process of its own (the benchmark's two-process mode).

Two real devices are two processes on two machines; run in one process they share one
GIL, and the source's Python (reading and serialising records, the event loop) holds
back the receiver's store thread. ``bench_sync.py`` starts this script with A's home,
measures the receiver in its own process and talks to this one over a pipe: one JSON
object per line on stdin, one answer per line on stdout (logs go to stderr).

At start it opens the home, starts its ``MeshService`` (127.0.0.1, no mDNS, a free
port) and writes ``{"ready": true, "port": P, "device": D}``. Commands (``op``):

* ``watch``: from now on count what A sends and does (the same ``Watch``, ``JobClock``,
  ``FrameCount`` and per-thread CPU as the in-process mode);
* ``connect`` (``port``, ``expect``): dial the receiver on 127.0.0.1;
* ``report`` (``wall``): the counts since ``watch``, shares over ``wall`` seconds;
* ``in_sync`` / ``outbox`` (``device``): whether A is in sync with it; messages A still
  holds for it;
* ``stop``: stop the service, close the node, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from tests.mind_helpers import quiet_settings  # noqa: E402

import bench_sync as bench  # noqa: E402


class Source:
    def __init__(self, svc: Any) -> None:
        self.svc = svc
        self.cpu0: dict[str, float] = {}
        self.watch: Any = None
        self.jobs: Any = None
        self.frames: Any = None

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        svc = self.svc
        if op == "watch":
            self.watch, self.jobs = bench.Watch(svc), bench.JobClock(svc)
            self.frames = bench.FrameCount(svc)
            self.cpu0 = bench.thread_cpu({"A": svc})
            return {"ok": True}
        if op == "connect":
            device = await svc.connect("127.0.0.1", int(cmd["port"]), expect=cmd.get("expect"))
            return {"ok": True, "device": device}
        if op == "report":
            wall = float(cmd["wall"])
            self.jobs.active = False
            return {
                "ok": True,
                "sent": dict(self.watch.sent),
                "sent_bytes": dict(self.watch.sent_bytes),
                "frames": self.frames.summary(),
                "jobs": self.jobs.table(wall),
                "cpu": bench.cpu_share(self.cpu0, bench.thread_cpu({"A": svc}), wall),
            }
        if op == "in_sync":
            return {"ok": True, "value": bench.in_sync(svc, str(cmd["device"]))}
        if op == "outbox":
            return {"ok": True, "value": await bench.outbox_count(svc, str(cmd["device"]))}
        return {"ok": False, "error": f"unknown op {op!r}"}


def answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(home: Path, seed: int) -> None:
    settings = quiet_settings(home, **bench.ENV)
    svc = await bench.open_service(settings, seed=seed)
    source = Source(svc)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answer({"ready": True, "port": svc.port, "device": svc.node.device_id})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("op") == "stop":
                break
            try:
                answer(await source.handle(cmd))
            except Exception as exc:  # tell the benchmark (which raises), then fail here too
                answer({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                raise
    finally:
        await bench.stop_service(svc)
    answer({"ok": True, "stopped": True})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="A %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.home, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
