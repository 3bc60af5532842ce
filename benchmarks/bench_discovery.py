"""Benchmark mDNS discovery: how soon the other devices see a node that starts.

Usage (as root: it builds network namespaces)::

    .venv/bin/python benchmarks/bench_discovery.py [--trials 20] [--observers 3]
                                                   [--out benchmarks/results/discovery.json]

``--observers`` discovery nodes of one mind run on a namespace LAN
(``tests/netns.py``: a bridge, veths, no packet in the root namespace). Each
trial starts a new node (``tests/mesh_discovery_child.py``) of the same mind, with
a new device id, on one more namespace and measures, from the moment it calls
``Discovery.start()`` (after Python and imports have loaded), until the first
observer and until every observer reported it, and until it saw every observer
itself. Then it stops (sending goodbyes) and the next trial begins.

Baseline, interleaved trial by trial: the same node using zeroconf the way its
documentation shows (``plain``: probe the name before announcing, resolve with
``async_get_service_info``). The observers are KI_ana ``Discovery`` nodes in both.
Times come from ``time.time()`` in the processes; all namespaces share one clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zeroconf

ROOT = Path(__file__).resolve().parent
TESTS = ROOT.parent / "tests"
sys.path.insert(0, str(TESTS))

from netns import Lan, stop_process  # noqa: E402

CHILD = str(TESTS / "mesh_discovery_child.py")
MIND = "mind-benchbenchbenchbenc"
TARGET_MEDIAN_S = 0.5
SEEN_TIMEOUT_S = 10.0


class Reader:
    """Collects a child's JSON lines on a thread; ``wait_for`` one matching event."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def wait_for(self, event: str, device: str | None, deadline: float) -> dict[str, Any] | None:
        for e in self.seen:
            if e["event"] == event and (device is None or e.get("device") == device):
                return e
        while (left := deadline - time.monotonic()) > 0:
            try:
                e = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(e)
            if e["event"] == event and (device is None or e.get("device") == device):
                return e
        return None


def node_argv(mode: str, device: str, port: int, duration: float) -> list[str]:
    options = ["--mind", MIND, "--device", device, "--port", str(port)]
    return [sys.executable, CHILD, mode, *options, "--duration", str(duration)]


def trial(
    lan: Lan, host: str, mode: str, n: int, observers: list[tuple[str, Reader]]
) -> dict[str, Any]:
    device = f"bench-{mode}-{n}-{os.getpid()}"
    proc = lan.run(host, node_argv(mode, device, 7475, 60))
    reader = Reader(proc)
    try:
        deadline = time.monotonic() + 30
        start = reader.wait_for("starting", None, deadline)
        if start is None:
            raise RuntimeError(
                f"the new node did not start: {proc.stderr.read() if proc.stderr else ''}"
            )
        t0 = start["t"]
        deadline = time.monotonic() + SEEN_TIMEOUT_S
        seen_by = [r.wait_for("peer", device, deadline) for _, r in observers]
        sees = [reader.wait_for("peer", name, deadline) for name, _ in observers]
    finally:
        stop_process(proc)
    missing = sum(e is None for e in seen_by) + sum(e is None for e in sees)
    return {
        "mode": mode,
        "first_seen_s": min((e["t"] - t0 for e in seen_by if e), default=None),
        "all_seen_s": None if None in seen_by else max(e["t"] - t0 for e in seen_by if e),
        "sees_all_s": None if None in sees else max(e["t"] - t0 for e in sees if e),
        "missing": missing,
    }


def summary(values: list[float | None]) -> dict[str, Any]:
    ok = sorted(v for v in values if v is not None)
    if not ok:
        return {"n": 0, "failed": len(values)}
    p95 = ok[min(len(ok) - 1, round(0.95 * (len(ok) - 1)))]
    return {
        "n": len(ok),
        "failed": len(values) - len(ok),
        "median_s": round(statistics.median(ok), 4),
        "p95_s": round(p95, 4),
        "min_s": round(ok[0], 4),
        "max_s": round(ok[-1], 4),
    }


def machine_info() -> dict[str, Any]:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
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
        "kernel": platform.release(),
        "python": platform.python_version(),
        "zeroconf": zeroconf.__version__,
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--observers", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain-zeroconf trials")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "discovery.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2

    info = machine_info()
    modes = ["node"] if args.no_baseline else ["node", "plain"]
    results: list[dict[str, Any]] = []
    with Lan(args.observers + 1) as lan:
        hosts = list(lan.hosts)
        observers: list[tuple[str, Reader]] = []
        for i, host in enumerate(hosts[:-1]):
            name = f"observer-{i}-{os.getpid()}"
            reader = Reader(lan.run(host, node_argv("node", name, 7475, 3600)))
            observers.append((name, reader))
        deadline = time.monotonic() + 30
        for name, reader in observers:
            if reader.wait_for("started", None, deadline) is None:
                raise RuntimeError(f"observer {name} did not start")
        time.sleep(1.0)  # let the observers' own startup traffic settle
        for n in range(args.trials):
            for mode in modes if n % 2 == 0 else modes[::-1]:
                res = trial(lan, hosts[-1], mode, n, observers)
                results.append(res)
                print(
                    f"trial {n:2} {mode:5} first {res['first_seen_s']} all {res['all_seen_s']}"
                    f" sees {res['sees_all_s']}",
                    file=sys.stderr,
                )
                time.sleep(0.3)

    table: dict[str, dict[str, Any]] = {}
    for mode in modes:
        rows = [r for r in results if r["mode"] == mode]
        label = "kiana Discovery" if mode == "node" else "plain zeroconf (baseline)"
        for key, what in (
            ("first_seen_s", "seen by the first observer"),
            ("all_seen_s", f"seen by all {args.observers} observers"),
            ("sees_all_s", "new node sees all observers"),
        ):
            table[f"{label}: {what}"] = summary([r[key] for r in rows])
    print(
        f"\n{'measurement (from start(), N=' + str(args.trials) + ')':62} {'median':>9} {'p95':>9} {'failed':>7}"
    )
    for name, s in table.items():
        if s["n"]:
            print(
                f"{name:62} {s['median_s'] * 1000:7.1f}ms {s['p95_s'] * 1000:7.1f}ms {s['failed']:>7}"
            )
        else:
            print(f"{name:62} {'-':>9} {'-':>9} {s['failed']:>7}")
    main_row = table[f"kiana Discovery: seen by all {args.observers} observers"]
    targets = {
        "all_seen_median_s<=0.5": bool(main_row["n"]) and main_row["median_s"] <= TARGET_MEDIAN_S
    }
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    info["loadavg_end"] = list(os.getloadavg())
    out = {
        "machine": info,
        "params": vars(args) | {"out": str(args.out)},
        "summary": table,
        "trials": results,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
