"""Benchmark embedding: one-sentence latency and ingest throughput, against raw baselines.

Usage::

    .venv/bin/python benchmarks/bench_embed.py [--chunks 1500] [--out benchmarks/results/embed.json]

Latency: ``embed([sentence])`` of KI_ana's ONNX and torch runtimes, interleaved with the
same sentence through sentence-transformers' own ``model.encode`` and through a raw
onnxruntime session (tokenizers + session.run + pooling): the irreducible work.
Ingest: chunk-sized texts (300-1200 characters) through ``VectorMemory.index_blocks``
(embed, store the vectors in the database, add them to the hnsw index) against the raw
model encoding the same texts in batches of the same size. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiana.config import load_settings
from kiana.memory.embedding.common import mean_pool
from kiana.memory.embedding.loader import load_embedder
from kiana.memory.embedding.onnx_export import ensure_onnx
from kiana.memory.embedding.registry import default_threads, get_spec, model_dir
from kiana.memory.index_service import VectorMemory
from kiana.node import Node

ROOT = Path(__file__).resolve().parent
EVAL = ROOT.parent.parent / "shared" / "eval" / "memory-dev.jsonl"
SENTENCE = (
    "Theo's class trip to the planetarium is on 28 March; he needs 8 euros and a packed lunch."
)
TARGET_SINGLE_MS = 10.0
TARGET_INGEST_RATIO = 0.90


def facts() -> list[str]:
    for path in (EVAL, Path("/work/shared/eval/memory-dev.jsonl")):
        if path.exists():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            return [r["text"] for r in rows if r.get("type") == "fact"]
    return [SENTENCE, "Mum's birthday is 14 March.", "The boiler service is on 3 June."]


def chunk_texts(n: int, seed: int = 7) -> list[str]:
    """Paragraphs of 300-1200 characters made of real facts, like 'kiana add' chunks."""
    rng = random.Random(seed)
    pool = facts()
    out = []
    for _ in range(n):
        target = rng.randint(300, 1200)
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target:
            parts.append(rng.choice(pool))
        out.append(" ".join(parts))
    return out


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(samples: Sequence[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": round(statistics.median(s), 3),
        "p95_ms": round(s[int(0.95 * (len(s) - 1))], 3),
        "mean_ms": round(statistics.fmean(s), 3),
        "n": len(s),
    }


class RawOnnx:
    """The baseline: tokenizers + onnxruntime + pooling, no KI_ana code in the loop."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        spec = get_spec("all-minilm-l6-v2")
        self.tok = Tokenizer.from_file(str(model_dir(spec) / "tokenizer.json"))
        self.tok.enable_truncation(max_length=spec.max_tokens)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()  # the same session options KI_ana uses: compare the code
        opts.intra_op_num_threads = default_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return mean_pool(self.session.run(None, feeds)[0], mask)


def single_latency(
    runs: dict[str, Callable[[], object]], rounds: int, per_round: int
) -> dict[str, Any]:
    for fn in runs.values():  # warm-up
        timed(fn, 20)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):  # interleaved, alternating who goes first
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            samples[name] += timed(runs[name], per_round)
    return {name: summary(s) for name, s in samples.items()}


def ingest(
    settings_home: Path,
    texts: list[str],
    embedder: Any,
    raw: Callable[[list[str]], object],
    batch: int,
) -> dict[str, Any]:
    """chunks/s through VectorMemory.index_blocks vs the raw encoder, interleaved per batch."""
    settings = load_settings(home=settings_home, environ={})
    with Node.init(settings, mind_name="bench") as node:
        node.auto_embed = False  # store first; the service is measured on its own below
        blocks = [node.new_block(body=t, kind="chunk") for t in texts]
        node.store.put_many(blocks, verified=True)
        memory = VectorMemory(node.store, settings, embedder=embedder)
        node.vectors = memory
        _ = memory.index  # open (and sync) the hnsw index, as a running server has
        kiana_s = raw_s = 0.0
        for i, start in enumerate(range(0, len(blocks), batch)):
            part = blocks[start : start + batch]
            texts_part = [b.body for b in part]
            steps: list[tuple[str, Callable[[], object]]] = [
                ("kiana", lambda part=part: memory.index_blocks(part, only_missing=False)),
                ("raw", lambda texts_part=texts_part: raw(texts_part)),
            ]
            for name, fn in steps if i % 2 == 0 else steps[::-1]:
                t = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t
                if name == "kiana":
                    kiana_s += elapsed
                else:
                    raw_s += elapsed
        status = memory.status()
        flush_t = time.perf_counter()
        memory.index.flush()
        flush_s = time.perf_counter() - flush_t
    n = len(texts)
    return {
        "chunks": n,
        "batch": batch,
        "kiana_chunks_per_s": round(n / kiana_s, 1),
        "raw_chunks_per_s": round(n / raw_s, 1),
        "ratio": round(raw_s / kiana_s, 3),
        "vectors_stored": status["vectors"],
        "index_count": status["index"],
        "index_save_s": round(flush_s, 3),
    }


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import sentence_transformers
    import torch

    cpu = ""
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
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "threads": default_threads(),
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "embed.json")
    args = parser.parse_args(argv)

    info = machine_info()
    settings = load_settings(home=Path(tempfile.mkdtemp(prefix="kiana-bench-")) / "h", environ={})
    t = time.perf_counter()
    onnx = load_embedder(settings, runtime="onnx")
    onnx_load = time.perf_counter() - t
    t = time.perf_counter()
    torch_emb = load_embedder(settings, runtime="torch")
    torch_load = time.perf_counter() - t
    st_model = torch_emb._model  # type: ignore[attr-defined]  # sentence-transformers itself
    raw_onnx = RawOnnx(ensure_onnx(get_spec("all-minilm-l6-v2"), settings.model_cache_dir))

    print(f"single sentence, {args.rounds} x {args.per_round} interleaved ...", file=sys.stderr)
    single = single_latency(
        {
            "kiana onnx": lambda: onnx.embed([SENTENCE]),
            "raw onnxruntime": lambda: raw_onnx.encode([SENTENCE]),
            "kiana torch": lambda: torch_emb.embed([SENTENCE]),
            "sentence-transformers encode": lambda: st_model.encode(
                SENTENCE, normalize_embeddings=True
            ),
        },
        args.rounds,
        args.per_round,
    )
    texts = chunk_texts(args.chunks)
    gc.collect()
    print(f"ingest {len(texts)} chunks ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kiana-bench-") as tmp:
        ingest_onnx = ingest(Path(tmp) / "a", texts, onnx, raw_onnx.encode, args.batch)
        st_encode = lambda b: st_model.encode(b, batch_size=len(b), normalize_embeddings=True)  # noqa: E731
        ingest_torch = ingest(
            Path(tmp) / "b", texts[: max(200, len(texts) // 3)], torch_emb, st_encode, args.batch
        )

    rows = [
        ("load onnx (export cached)", f"{onnx_load:.2f} s", "", ""),
        ("load torch", f"{torch_load:.2f} s", "", ""),
    ]
    for name, s in single.items():
        rows.append(
            (f"1 sentence: {name}", f"{s['median_ms']:.2f} ms", f"{s['p95_ms']:.2f} ms", "")
        )
    for label, res, base in (
        ("onnx", ingest_onnx, "raw onnxruntime"),
        ("torch", ingest_torch, "sentence-transformers"),
    ):
        rows.append(
            (
                f"ingest {label}: service vs {base}",
                f"{res['kiana_chunks_per_s']:.0f}/s",
                f"{res['raw_chunks_per_s']:.0f}/s",
                f"{res['ratio']:.2f}",
            )
        )
    print(f"\n{'measurement':52} {'KI_ana / median':>16} {'baseline / p95':>16} {'ratio':>7}")
    for r in rows:
        print(f"{r[0]:52} {r[1]:>16} {r[2]:>16} {r[3]:>7}")
    targets = {
        "single_onnx_median_ms<=10": single["kiana onnx"]["median_ms"] <= TARGET_SINGLE_MS,
        "ingest_onnx_ratio>=0.9": ingest_onnx["ratio"] >= TARGET_INGEST_RATIO,
    }
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    info["loadavg_end"] = list(os.getloadavg())
    out = {
        "machine": info,
        "params": vars(args) | {"out": str(args.out)},
        "load_s": {"onnx": round(onnx_load, 3), "torch": round(torch_load, 3)},
        "single_sentence": single,
        "ingest": {"onnx": ingest_onnx, "torch": ingest_torch},
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
