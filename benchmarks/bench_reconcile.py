"""Benchmark range-based set reconciliation (``kiana.sync.reconcile``) against baselines.

Usage::

    .venv/bin/python benchmarks/bench_reconcile.py [--items 100000] [--diffs 1,10,100,1000]
                                                   [--million] [--no-sweep]
                                                   [--out benchmarks/results/reconcile.json]

Two in-process peers share ``--items`` items (random ids, timestamps over a
year) and differ by ``d`` items, split across both sides (``ceil(d/2)`` only on
the initiator, ``floor(d/2)`` only on the responder). For each ``d`` the table
gives round trips, bytes in both directions and wall time of the whole session
(both sides in one process, snapshots included), next to two baselines:

* naive, measured in the same run: the initiator sends every id (32 bytes
  each), the responder answers with the ids each side lacks (32 bytes each);
  one logical round trip, carried in ``ceil(bytes / frame_limit)`` frames;
* negentropy's published figure, as the anchor: one difference among 1M items
  in about 3 round trips and 1.5 KB (``--million`` measures ours at that size).

Goal for d = 1: at most 3 round trips and 4 KB. A sweep over ``buckets`` and
``id_list_threshold`` shows where the defaults sit (``--no-sweep`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kiana.sync.reconcile import ItemSet, Reconciler

ROOT = Path(__file__).resolve().parent
T0_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: timestamps span the year after this
YEAR_MS = 365 * 24 * 3600 * 1000
FRAME = 60_000
ANCHOR = {"n": 1_000_000, "d": 1, "round_trips": 3, "bytes": 1500}
GOAL = {"d": 1, "round_trips": 3, "bytes": 4096}

Item = tuple[int, bytes]


def make_items(rng: random.Random, n: int) -> list[Item]:
    return [(T0_MS + rng.randrange(YEAR_MS), rng.randbytes(32)) for _ in range(n)]


def session(a: ItemSet, b: ItemSet, **kw: int) -> dict[str, Any]:
    start = time.perf_counter()
    init = Reconciler(a, initiator=True, **kw)
    resp = Reconciler(b, initiator=False, **kw)
    largest = 0
    msg: bytes | None = init.initiate()
    while msg is not None:
        reply = resp.respond(msg)
        largest = max(largest, len(msg), len(reply))
        msg = init.reconcile(reply)
    seconds = time.perf_counter() - start
    return {
        "round_trips": init.rounds,
        "bytes_to_responder": init.bytes_sent,
        "bytes_to_initiator": init.bytes_received,
        "bytes": init.bytes_sent + init.bytes_received,
        "largest_message": largest,
        "seconds": seconds,
        "have": init.have,
        "need": init.need,
    }


def naive(a: ItemSet, b: ItemSet, frame: int) -> dict[str, Any]:
    """Initiator sends every id; responder returns the ids each side lacks."""
    start = time.perf_counter()
    request = b"".join(i for _, i in a)
    theirs = {request[p : p + 32] for p in range(0, len(request), 32)}
    mine = {i for _, i in b}
    reply = b"".join(sorted(mine - theirs)) + b"".join(sorted(theirs - mine))
    seconds = time.perf_counter() - start
    total = len(request) + len(reply)
    return {
        "round_trips": 1,
        "frames": math.ceil(len(request) / frame) + max(1, math.ceil(len(reply) / frame)),
        "bytes": total,
        "seconds": seconds,
    }


def pair(
    rng: random.Random, common: list[Item], d: int
) -> tuple[ItemSet, ItemSet, set[bytes], set[bytes]]:
    extra = make_items(rng, d)
    only_a, only_b = extra[: (d + 1) // 2], extra[(d + 1) // 2 :]
    a, b = ItemSet(common + only_a), ItemSet(common + only_b)
    a.fingerprint(0, len(a))  # build prefix sums, as a live store has them
    b.fingerprint(0, len(b))
    return a, b, {i for _, i in only_a}, {i for _, i in only_b}


def measure(rng: random.Random, common: list[Item], d: int, **kw: int) -> dict[str, Any]:
    a, b, want_have, want_need = pair(rng, common, d)
    r = session(a, b, **kw)
    assert set(r.pop("have")) == want_have and set(r.pop("need")) == want_need, "wrong result"
    r["naive"] = naive(a, b, kw.get("frame_limit", FRAME))
    return r


def machine() -> dict[str, Any]:
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
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    rng = random.Random(args.seed)
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "items": args.items,
            "diffs": args.diffs,
            "frame_limit": FRAME,
            "buckets": 16,
            "id_list_threshold": 32,
            "seed": args.seed,
        },
        "anchor_negentropy": ANCHOR,
        "goal": GOAL,
    }
    common = make_items(rng, args.items)
    t = time.perf_counter()
    s = ItemSet(common)
    t_sort = time.perf_counter() - t
    t = time.perf_counter()
    s.fingerprint(0, len(s))
    t_sums = time.perf_counter() - t
    # a live store: new items arrive with current timestamps (the tail of the sums is rebuilt) ...
    fresh = [(T0_MS + YEAR_MS + k, rng.randbytes(32)) for k in range(1000)]
    t = time.perf_counter()
    for ts, i in fresh:
        s.add(ts, i)
        s.fingerprint(0, len(s))
    t_append = (time.perf_counter() - t) / len(fresh)
    # ... while an old item (a late sync) rebuilds the sums from its position
    old = make_items(rng, 50)
    t = time.perf_counter()
    for ts, i in old:
        s.add(ts, i)
        s.fingerprint(0, len(s))
    t_random = (time.perf_counter() - t) / len(old)
    result["build"] = {
        "sort_seconds": t_sort,
        "prefix_sums_seconds": t_sums,
        "add_recent_then_fingerprint_us": t_append * 1e6,
        "add_old_then_fingerprint_us": t_random * 1e6,
    }
    log(f"built ItemSet of {args.items:,} in {t_sort + t_sums:.2f}s", start)
    del s

    result["runs"] = {}
    for d in args.diffs:
        result["runs"][str(d)] = measure(rng, common, d)
        log(f"d={d}: {result['runs'][str(d)]['round_trips']} round trips", start)

    if args.million:
        big = common + make_items(rng, ANCHOR["n"] - len(common))
        result["million"] = measure(rng, big, 1)
        del big
        log("1M, d=1 done", start)

    if args.sweep:
        sweep = []
        for buckets, threshold in (
            (8, 16),
            (8, 32),
            (16, 16),
            (16, 32),
            (16, 64),
            (32, 32),
            (32, 64),
        ):
            for d in args.diffs:
                r = measure(rng, common, d, buckets=buckets, id_list_threshold=threshold)
                sweep.append({"buckets": buckets, "id_list_threshold": threshold, "d": d, **r})
        result["sweep"] = sweep
        log("sweep done", start)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB" if n >= 1e3 else f"{n:.0f} B"


def build_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    n = result["params"]["items"]
    for d, r in result["runs"].items():
        nv = r["naive"]
        rows.append(
            {
                "n": f"{n:,}",
                "d": d,
                "round trips": str(r["round_trips"]),
                "→ responder": fmt_bytes(r["bytes_to_responder"]),
                "→ initiator": fmt_bytes(r["bytes_to_initiator"]),
                "total": fmt_bytes(r["bytes"]),
                "time": f"{r['seconds'] * 1000:.0f} ms",
                "naive total": fmt_bytes(nv["bytes"]),
                "naive frames": str(nv["frames"]),
                "naive time": f"{nv['seconds'] * 1000:.0f} ms",
                "bytes vs naive": f"{r['bytes'] / nv['bytes']:.4f}×",
            }
        )
    if "million" in result:
        r = result["million"]
        rows.append(
            {
                "n": f"{ANCHOR['n']:,}",
                "d": "1",
                "round trips": str(r["round_trips"]),
                "→ responder": fmt_bytes(r["bytes_to_responder"]),
                "→ initiator": fmt_bytes(r["bytes_to_initiator"]),
                "total": fmt_bytes(r["bytes"]),
                "time": f"{r['seconds'] * 1000:.0f} ms",
                "naive total": fmt_bytes(r["naive"]["bytes"]),
                "naive frames": str(r["naive"]["frames"]),
                "naive time": f"{r['naive']['seconds'] * 1000:.0f} ms",
                "bytes vs naive": f"{r['bytes'] / r['naive']['bytes']:.5f}×",
            }
        )
    rows.append(
        {
            "n": f"{ANCHOR['n']:,}",
            "d": "1",
            "round trips": f"~{ANCHOR['round_trips']}",
            "→ responder": "",
            "→ initiator": "",
            "total": f"~{fmt_bytes(ANCHOR['bytes'])}",
            "time": "",
            "naive total": "negentropy",
            "naive frames": "(published)",
            "naive time": "",
            "bytes vs naive": "",
        }
    )
    return rows


def print_table(title: str, rows: list[dict[str, str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        print(title)
        for r in rows:
            print(" | ".join(r.values()))
        return
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*r.values())
    Console(width=160).print(table)


def print_sweep(result: dict[str, Any]) -> None:
    if "sweep" not in result:
        return
    print("sweep (round trips / total bytes / ms):")
    for s in result["sweep"]:
        print(
            f"  buckets={s['buckets']:>2} threshold={s['id_list_threshold']:>2} d={s['d']:>5}:"
            f" {s['round_trips']:>3} rt  {fmt_bytes(s['bytes']):>9}  {s['seconds'] * 1000:6.0f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000, help="shared items (default 100000)")
    ap.add_argument("--diffs", default="1,10,100,1000", help="differences to try")
    ap.add_argument("--million", action="store_true", help="also d=1 among 1M items (~1 GB RAM)")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the sweep")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    args.diffs = [int(x) for x in args.diffs.split(",")]

    result = run(args)
    rows = build_rows(result)
    result["table"] = rows
    m, b = result["machine"], result["build"]
    title = (
        f"KI_ana reconciliation — {args.items:,} items, frame {FRAME:,} B, buckets 16, "
        f"threshold 32, {m['cpu_count']} CPUs, Python {m['python']}, {m['date']}"
    )
    print_table(title, rows)
    print(
        f"ItemSet of {args.items:,}: sort {b['sort_seconds'] * 1000:.0f} ms, prefix sums "
        f"{b['prefix_sums_seconds'] * 1000:.0f} ms; add + full fingerprint: "
        f"{b['add_recent_then_fingerprint_us']:.0f} µs (recent ts), "
        f"{b['add_old_then_fingerprint_us'] / 1000:.1f} ms (random old ts)"
    )
    print_sweep(result)
    d1 = result["runs"].get("1")
    if d1 is not None:
        ok = d1["round_trips"] <= GOAL["round_trips"] and d1["bytes"] <= GOAL["bytes"]
        print(f"goal d=1 (≤3 round trips, ≤4 KB): {'met' if ok else 'NOT met'}")
    out = args.out or ROOT / "results" / "reconcile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
