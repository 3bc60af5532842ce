"""Benchmark signed CRDT ops against raw Ed25519 in the same run.

Usage::

    .venv/bin/python benchmarks/bench_crdt.py [--ops 20000] [--rounds 3]
                                              [--out benchmarks/results/crdt.json]

Measures, best of ``--rounds`` on one thread:

* raw Ed25519 (PyNaCl): sign, verify, and sign + verify of a 48-byte message
  (the length of an op's signed message) — the floor for the rest;
* ``sign_op`` / ``verify_op``: an op's canonical bytes, SHA-256, domain and Ed25519;
* local writes: ``SharedState.set/incr/add`` (sign + apply) per second;
* receiving: ``decode_ops`` + ``SharedState.receive`` (check against the member
  directory + apply) per second, and the share of that time ``verify_op`` alone takes;
* the ratio of ops signed+verified per second to raw sign+verify per second.

The machine is usually small and shared: compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from kiana.sync.crdt import Op, ReplicaKey, SharedState, decode_ops, encode_ops, verify_op
from kiana.sync.crdt_wire import sign_op

ROOT = Path(__file__).resolve().parent


def _key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"kiana-bench-crdt\x00" + name.encode()).digest())


def _best(rounds: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _write(state: SharedState, n: int) -> list[Op]:
    ops: list[Op] = []
    for i in range(n):
        if i % 3 == 0:
            ops.append(state.set(f"k{i % 500}", {"n": i, "who": "bench"}))
        elif i % 3 == 1:
            ops.append(state.incr("counter", 1))
        else:
            ops.append(state.add("set", f"e{i % 1000}"))
    return ops


def run(n: int, rounds: int) -> dict[str, Any]:
    keys = {name: _key(name) for name in ("a", "b")}
    table = {name: ReplicaKey(bytes(k.verify_key)) for name, k in keys.items()}
    msgs = [hashlib.sha256(i.to_bytes(8, "big")).digest() + b"x" * 16 for i in range(n)]
    key = keys["a"]
    vk = key.verify_key
    sigs = [key.sign(m).signature for m in msgs]

    raw_sign = _best(rounds, lambda: [key.sign(m) for m in msgs])
    raw_verify = _best(rounds, lambda: [vk.verify(m, s) for m, s in zip(msgs, sigs, strict=True)])

    writer = SharedState("a", signer=keys["a"], directory=table.get)
    ops = _write(writer, n)
    unsigned = [Op(o.replica, o.seq, o.lamport, o.kind, o.key, o.value, o.tags) for o in ops]
    public = bytes(vk)
    t_sign_op = _best(rounds, lambda: [sign_op(key, o) for o in unsigned])
    t_verify_op = _best(rounds, lambda: [verify_op(o, public) for o in ops])

    def local_writes() -> None:
        _write(SharedState("a", signer=keys["a"], directory=table.get), n)

    t_write = _best(rounds, local_writes)
    frames = [encode_ops(ops[i : i + 2000]) for i in range(0, n, 2000)]

    def receive() -> None:
        b = SharedState("b", signer=keys["b"], directory=table.get)
        for frame in frames:
            b.receive(decode_ops(frame), sender="a")
        assert b.state_vector() == {"a": n}

    t_receive = _best(rounds, receive)
    t_decode = _best(rounds, lambda: [decode_ops(f) for f in frames])
    rate = {
        "raw_sign_per_s": n / raw_sign,
        "raw_verify_per_s": n / raw_verify,
        "raw_sign_verify_per_s": n / (raw_sign + raw_verify),
        "sign_op_per_s": n / t_sign_op,
        "verify_op_per_s": n / t_verify_op,
        "sign_verify_op_per_s": n / (t_sign_op + t_verify_op),
        "local_writes_per_s": n / t_write,
        "decode_per_s": n / t_decode,
        "decode_receive_per_s": n / t_receive,
    }
    out: dict[str, Any] = {k: round(v) for k, v in rate.items()}
    out["ratio_sign_verify_op_to_raw"] = round(
        rate["sign_verify_op_per_s"] / rate["raw_sign_verify_per_s"], 3
    )
    out["verify_share_of_receive"] = round(t_verify_op / t_receive, 3)
    out["frame_bytes_per_op"] = round(sum(len(f) for f in frames) / n, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=20_000, help="ops per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/crdt.json)")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = run(args.ops, args.rounds)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "date": dt.date.today().isoformat(),
            "load_1min_before": load,
            "commit": commit,
        },
        "ops": args.ops,
        "rounds": args.rounds,
        **result,
    }
    for key, value in result.items():
        print(f"{key:>30}: {value}")
    out = args.out or ROOT / "results" / "crdt.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
