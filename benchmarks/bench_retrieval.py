"""Retrieval quality on the dev set: keyword only, vector only, hybrid.

    .venv/bin/python benchmarks/bench_retrieval.py [--eval PATH] [--out benchmarks/results/retrieval.json]

Builds a fresh mind in a temporary home, remembers every fact of
``shared/eval/memory-dev.jsonl`` (a superseded fact first, then its newer
version with a ``supersedes`` ref, as a user would), then asks every question
through three retrievers and reports, over the questions that have answers:

* recall@1 — the top block is one of the answers,
* recall@5 — all answers are among the top 5,
* MRR — mean of 1 / rank of the first answer (0 when none in the top 20),

and, for the questions without an answer, how often the hybrid retriever puts
nothing in the prompt above the relevance threshold (the assistant's "I don't
know" path). Reference numbers from the eval README are printed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL = ROOT.parent / "shared" / "eval" / "memory-dev.jsonl"

Ranker = Callable[[str, int], list[str]]


def load_eval(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    facts, questions = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            (facts if item["type"] == "fact" else questions).append(item)
    return facts, questions


def ingest(node: Any, facts: list[dict[str, Any]]) -> dict[str, str]:
    """Remember every fact; return block id -> fact id."""
    predecessor = {f["superseded_by"]: f["id"] for f in facts if f.get("superseded_by")}
    by_id = {f["id"]: f for f in facts}
    block_of: dict[str, str] = {}
    pending = list(by_id)
    while pending:
        progressed = []
        for fid in pending:
            old = predecessor.get(fid)
            if old is not None and old not in block_of:
                continue
            fact = by_id[fid]
            result = node.remember(
                fact["text"], lang=fact["lang"], supersedes=block_of.get(old) if old else None
            )
            block_of[fid] = result.block.id
            progressed.append(fid)
        if not progressed:
            raise SystemExit("supersession cycle in the eval set")
        pending = [f for f in pending if f not in progressed]
    return {b: f for f, b in block_of.items()}


def score(questions: list[dict[str, Any]], rank: Ranker, fact_of: dict[str, str]) -> dict[str, Any]:
    r1 = r5 = 0
    rr: list[float] = []
    misses: list[str] = []
    answered = [q for q in questions if q["answers"]]
    latencies: list[float] = []
    for q in answered:
        started = time.perf_counter()
        ids = rank(q["text"], 20)
        latencies.append((time.perf_counter() - started) * 1000)
        facts = [fact_of.get(i, "?") for i in ids]
        answers = set(q["answers"])
        if facts[:1] and facts[0] in answers:
            r1 += 1
        if answers <= set(facts[:5]):
            r5 += 1
        else:
            misses.append(q["id"])
        first = next((n for n, f in enumerate(facts, start=1) if f in answers), None)
        rr.append(1 / first if first else 0.0)
    n = len(answered)
    return {
        "questions": n,
        "recall@1": round(r1 / n, 3),
        "recall@5": round(r5 / n, 3),
        "mrr": round(sum(rr) / n, 3),
        "median_ms": round(statistics.median(latencies), 2),
        "misses@5": misses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval.json"
    )
    args = parser.parse_args(argv)

    from kiana.assistant.factory import build_retriever
    from kiana.config import load_settings
    from kiana.node import Node
    from kiana.store import BlockFilter

    facts, questions = load_eval(args.eval)
    with tempfile.TemporaryDirectory(prefix="kiana-retrieval-") as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("KIANA_MODEL_CACHE", "XDG_CACHE_HOME"))
        }
        settings = load_settings(Path(tmp) / "home", environ=env)
        with Node.init(settings, mind_name="eval") as node:
            started = time.perf_counter()
            fact_of = ingest(node, facts)
            ingest_s = time.perf_counter() - started
            retriever = build_retriever(node)
            flt = BlockFilter()

            def keyword(q: str, k: int) -> list[str]:
                return (
                    [h.block.id for h in node.search(q, limit=k)]
                    if any(c.isalnum() for c in q)
                    else []
                )

            def vector(q: str, k: int) -> list[str]:
                return [i for i, _ in node.vectors.search(q, k)]

            def hybrid(q: str, k: int) -> list[str]:
                return [r.block.id for r in retriever.retrieve(q, k=k, flt=flt)]

            rows = {
                name: score(questions, fn, fact_of)
                for name, fn in (("keyword", keyword), ("vector", vector), ("hybrid", hybrid))
            }

            from kiana.assistant.engine import Assistant
            from kiana.assistant.retrieval import relevant

            threshold = Assistant.min_similarity

            def gate(q: str) -> bool:
                return bool(relevant(retriever.retrieve(q, k=5), threshold))

            unanswerable = [q for q in questions if not q["answers"]]
            empty = sum(1 for q in unanswerable if not gate(q["text"]))
            answerable = [q for q in questions if q["answers"]]
            kept = sum(1 for q in answerable if gate(q["text"]))

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "eval": str(args.eval.name),
        "facts": len(facts),
        "ingest_seconds": round(ingest_s, 2),
        "modes": rows,
        "no_answer": {
            "questions": len(unanswerable),
            "empty_context": empty,
            "rate": round(empty / len(unanswerable), 3) if unanswerable else None,
            "answerable_with_context": round(kept / len(answerable), 3),
        },
        "reference": {
            "bm25_recall@5": 0.47,
            "cosine_recall@1": 0.606,
            "cosine_recall@5": 0.759,
            "cosine_mrr": 0.707,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'mode':<10} {'recall@1':>9} {'recall@5':>9} {'MRR':>6} {'median ms':>10}")
    for name, row in rows.items():
        print(
            f"{name:<10} {row['recall@1']:>9.3f} {row['recall@5']:>9.3f} {row['mrr']:>6.3f} {row['median_ms']:>10.2f}"
        )
    print(
        "reference: BM25 recall@5 0.47; exact cosine MiniLM recall@1 0.606, recall@5 0.759, MRR 0.707"
    )
    nr = result["no_answer"]
    print(
        f"no-answer questions with nothing relevant retrieved: {nr['empty_context']}/{nr['questions']}"
        f" (answerable questions that keep context: {nr['answerable_with_context']:.3f})"
    )
    print(f"ingest of {len(facts)} facts: {ingest_s:.1f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
