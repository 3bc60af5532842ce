"""Benchmark the deterministic mind simulator: seeds per minute and time per simulated step.

Usage::

    .venv/bin/python benchmarks/bench_sim.py [--seeds 1000] [--quick] [--steps 100]
                                             [--out benchmarks/results/sim.json]

Runs ``--seeds`` seeds (``--quick``: 100) of ``kiana.sync.sim.Simulation`` with the
layout varied by seed (3 to 5 devices, one or two authorities, a rogue member on every
fourth seed), each ``--steps`` steps of 200 virtual ms followed by the heal and the
invariant checks. Reports seeds per minute, wall time per simulated step and per seed,
virtual time simulated, frames and messages, and every failing seed with its replay
line. The machine is usually small and shared: compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kiana.sync.sim import Simulation, SimulationFailure
from kiana.sync.sim_mind import MindCache

ROOT = Path(__file__).resolve().parent


def run(args: argparse.Namespace) -> dict[str, Any]:
    seeds = 100 if args.quick and args.seeds is None else (args.seeds or 1000)
    per_seed: list[float] = []
    steps = frames = messages = virtual = crashes = 0
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kiana-bench-sim-") as tmp:
        cache = MindCache(Path(tmp))
        for seed in range(args.seed, args.seed + seeds):
            nodes, auth, rogue = 3 + seed % 3, 1 + seed % 2, seed % 4 == 0
            sim = Simulation(
                seed, nodes=nodes, steps=args.steps, authorities=auth, rogue=rogue, cache=cache
            )
            t0 = time.perf_counter()
            try:
                r = sim.run()
                steps += r.steps
                frames += r.frames
                messages += r.messages
                virtual += r.virtual_ms
                crashes += r.crashes
            except SimulationFailure as exc:
                failures.append(str(exc).splitlines()[-1])
            per_seed.append(time.perf_counter() - t0)
            if (seed - args.seed + 1) % 50 == 0:
                print(f"  {seed - args.seed + 1}/{seeds} seeds", file=sys.stderr)
    elapsed = time.perf_counter() - started
    return {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "date": dt.date.today().isoformat(),
        },
        "seeds": seeds,
        "steps_per_seed": args.steps,
        "failed": len(failures),
        "failures": failures[:50],
        "elapsed_s": round(elapsed, 2),
        "seeds_per_minute": round(seeds / elapsed * 60, 1),
        "ms_per_step": round(elapsed / max(steps, 1) * 1000, 3),
        "seed_s_median": round(statistics.median(per_seed), 3),
        "seed_s_max": round(max(per_seed), 3),
        "virtual_s_total": round(virtual / 1000, 1),
        "frames": frames,
        "messages": messages,
        "crashes": crashes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=None, help="seeds to run (default 1000)")
    ap.add_argument("--quick", action="store_true", help="100 seeds")
    ap.add_argument("--seed", type=int, default=1, help="first seed")
    ap.add_argument("--steps", type=int, default=100, help="steps per seed (200 virtual ms each)")
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/sim.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    result = run(args)
    for key in ("seeds", "failed", "elapsed_s", "seeds_per_minute", "ms_per_step"):
        print(f"{key:>18}: {result[key]}")
    for line in result["failures"]:
        print(f"  failing: {line}")
    out = args.out or ROOT / "results" / "sim.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
