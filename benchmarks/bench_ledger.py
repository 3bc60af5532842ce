"""Benchmark ledger verification against raw Ed25519 verification in the same run.

Usage::

    .venv/bin/python benchmarks/bench_ledger.py [--blocks 10000] [--records 10]
                                                [--out benchmarks/results/ledger.json]

A chain of ``--blocks`` sealed blocks with ``--records`` commit records each is built
once (one authority, in turn). Then, on the same chain:

* ``verify_chain`` over parsed blocks (signature, links, time, Merkle root, difficulty,
  signer limit, records, duplicate check);
* ``verify_chain`` over the blocks' JSON text (parse + the above: what
  ``kiana ledger verify`` does);
* ``Ledger.receive`` block by block (the core: verification plus tree, head and
  pending-pool bookkeeping);
* ``Ledger.open`` on a SQLite ``SqlLedgerStore`` holding the chain (load + rebuild);
* the baseline: raw PyNaCl ``VerifyKey.verify`` over the same number of signed
  messages of the same size.

The machine is usually small and shared, so the table reports each rate next to the
raw Ed25519 rate measured in the same run (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from kiana.identity import DeviceKeys, make_genesis
from kiana.ledger import (
    Ledger,
    LedgerBlock,
    SqlLedgerStore,
    block_json,
    commit_record,
    genesis_block,
    genesis_state,
    seal,
    verify_block,
    verify_chain,
)
from kiana.store.db import Database
from kiana.store.migrations import migrate

ROOT = Path(__file__).resolve().parent
T0_MS = 1_735_689_600_000


def build_chain(keys: DeviceKeys, blocks: int, records: int) -> tuple[Any, list[LedgerBlock]]:
    genesis = make_genesis(
        keys, name="bench", device_name="bench", created=T0_MS, person="p-aaaaaaaa"
    )
    prev = genesis_block(genesis)
    state = genesis_state(genesis)
    chain = [prev]
    n = 0
    for h in range(1, blocks + 1):
        recs = []
        for _ in range(records):
            recs.append(commit_record(hashlib.sha256(n.to_bytes(8, "big")).hexdigest()))
            n += 1
        block = seal(keys, prev, recs, T0_MS + h * 5_000, state)
        state = verify_block(block, prev, state)
        chain.append(block)
        prev = block
    return genesis, chain


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(blocks: int, records: int, workdir: Path) -> dict[str, Any]:
    keys = DeviceKeys.generate()
    t = time.perf_counter()
    genesis, chain = build_chain(keys, blocks, records)
    build_s = time.perf_counter() - t
    lines = [block_json(b) for b in chain]
    messages = [b.signed_message() for b in chain[1:]]
    sigs = [bytes.fromhex(b.sig) for b in chain[1:]]

    def raw() -> None:
        vk = VerifyKey(keys.sign_public)
        for m, s in zip(messages, sigs, strict=True):
            vk.verify(m, s)

    def parsed() -> None:
        assert verify_chain(chain, genesis).ok

    def text() -> None:
        assert verify_chain(lines, genesis).ok

    def receive() -> None:
        ledger = Ledger(genesis)
        for b in chain[1:]:
            ledger.receive(b)
        assert ledger.head == chain[-1]

    db = Database(f"sqlite:///{workdir / 'ledger.db'}")
    try:
        migrate(db)
        store = SqlLedgerStore(db)
        for b in chain[1:]:
            store.put_block(b, 2 * b.height)

        def reopen() -> None:
            assert Ledger.open(store, genesis).head == chain[-1]

        seconds = {
            "raw_ed25519_verify": timed(raw),
            "verify_chain": timed(parsed),
            "verify_chain_json": timed(text),
            "ledger_receive": timed(receive),
            "ledger_open_sqlite": timed(reopen),
        }
    finally:
        db.close()
    per_s = {k: blocks / v for k, v in seconds.items()}
    return {
        "build_seconds": build_s,
        "json_bytes_per_block": sum(len(x) for x in lines[1:]) / blocks,
        "seconds": seconds,
        "blocks_per_s": per_s,
        "records_per_s": {k: v * records for k, v in per_s.items()},
        "ratio_to_raw": {k: v / per_s["raw_ed25519_verify"] for k, v in per_s.items()},
    }


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


LABELS = {
    "raw_ed25519_verify": "raw Ed25519 verify (PyNaCl)",
    "verify_chain": "verify_chain (parsed blocks)",
    "verify_chain_json": "verify_chain (JSON text)",
    "ledger_receive": "Ledger.receive, in order",
    "ledger_open_sqlite": "Ledger.open (SQLite, rebuild)",
}


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    m = result["measurements"]
    return [
        {
            "Measure": LABELS[k],
            "Blocks/s": f"{m['blocks_per_s'][k]:,.0f}",
            "Records/s": f"{m['records_per_s'][k]:,.0f}",
            "Seconds": f"{m['seconds'][k]:.2f}",
            "Ratio to raw": f"{m['ratio_to_raw'][k]:.2f}×",
        }
        for k in LABELS
    ]


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
        table.add_column(col, justify="left" if col == "Measure" else "right")
    for r in rows:
        table.add_row(*r.values())
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=10_000)
    ap.add_argument("--records", type=int, default=10)
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/ledger.json)")
    args = ap.parse_args(argv)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="kiana-bench-ledger-") as tmp:
        measurements = measure(args.blocks, args.records, Path(tmp))
    machine["loadavg_end"] = list(os.getloadavg())
    result: dict[str, Any] = {
        "machine": machine,
        "params": {"blocks": args.blocks, "records_per_block": args.records},
        "measurements": measurements,
    }
    rows = table_rows(result)
    result["table"] = rows
    print_table(f"Ledger verification: {args.blocks:,} blocks × {args.records} records", rows)
    out = args.out or ROOT / "results" / "ledger.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
