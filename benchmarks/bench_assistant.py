"""Answer quality of the assistant on the dev set, with a real chat model.

    .venv/bin/python benchmarks/bench_assistant.py [--model qwen2.5-coder-1.5b-instruct]
        [--answerable 40] [--out benchmarks/results/assistant.json]

Remembers every fact of the dev set (as bench_retrieval.py does), then asks:

* every question that has no answer in memory — counted correct when the
  answer says it does not know and cites nothing;
* the first ``--answerable`` questions that have answers — counted for
  "cites an answer fact" (a citation is one of the expected facts) and
  "says it does not know" (a miss);

and reports time to first token and answer time. Checking "does not know" is
a keyword test in English and German, printed with each answer in the JSON so
a person can audit it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import DEFAULT_EVAL, ingest, load_eval

ROOT = Path(__file__).resolve().parents[1]
UNKNOWN = re.compile(
    r"(don'?t know|do not know|not in your memory|no information|not (?:mentioned|stated|specified)"
    r"|weiß (?:ich )?(?:es )?nicht|nicht in deinem gedächtnis|keine information)",
    re.IGNORECASE,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--answerable", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "assistant.json"
    )
    args = parser.parse_args(argv)

    from kiana.assistant.engine import Answer, Delta
    from kiana.assistant.factory import build_assistant
    from kiana.config import load_settings
    from kiana.llm.base import GenerationOptions
    from kiana.node import Node

    facts, questions = load_eval(args.eval)
    unanswerable = [q for q in questions if not q["answers"]]
    answerable = [q for q in questions if q["answers"]][: args.answerable]
    env = {"KIANA_CHAT_MODEL": args.model, "KIANA_CHAT_CONTEXT": "4096"}
    if "KIANA_MODEL_CACHE" in os.environ:
        env["KIANA_MODEL_CACHE"] = os.environ["KIANA_MODEL_CACHE"]
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="kiana-assistant-") as tmp,
        Node.init(load_settings(Path(tmp) / "home", environ=env), mind_name="eval") as node,
    ):
        fact_of = ingest(node, facts)
        assistant = build_assistant(node)
        assistant.options = GenerationOptions(max_tokens=args.max_tokens, temperature=0.0, seed=1)
        load = getattr(assistant.model, "load", None)
        if load is not None:
            load()
        for q in [*unanswerable, *answerable]:
            started = time.perf_counter()
            first: float | None = None
            answer: Answer | None = None
            for event in assistant.ask(q["text"], store=False):
                if isinstance(event, Delta) and first is None:
                    first = time.perf_counter() - started
                if isinstance(event, Answer):
                    answer = event
            assert answer is not None
            cited = [fact_of.get(c.block.id, "?") for c in answer.citations]
            rows.append(
                {
                    "id": q["id"],
                    "lang": q["lang"],
                    "question": q["text"],
                    "expected": q["answers"],
                    "answer": answer.text,
                    "cited": cited,
                    "unknown": bool(UNKNOWN.search(answer.text)),
                    "first_token_s": round(first or 0.0, 3),
                    "total_s": round(time.perf_counter() - started, 3),
                }
            )
            print(
                f"{q['id']} {rows[-1]['total_s']:6.2f}s cited={cited} {answer.text[:90]!r}",
                flush=True,
            )
        assistant.model.close()

    no = [r for r in rows if not r["expected"]]
    yes = [r for r in rows if r["expected"]]
    summary = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d"),
        "no_answer_questions": len(no),
        "no_answer_says_unknown": round(
            sum(r["unknown"] and not r["cited"] for r in no) / len(no), 3
        ),
        "answerable_questions": len(yes),
        "answerable_cites_expected_fact": round(
            sum(bool(set(r["cited"]) & set(r["expected"])) for r in yes) / len(yes), 3
        ),
        "answerable_says_unknown": round(sum(r["unknown"] for r in yes) / len(yes), 3),
        "first_token_median_s": round(statistics.median(r["first_token_s"] for r in rows), 2),
        "answer_median_s": round(statistics.median(r["total_s"] for r in rows), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"summary": summary, "answers": rows}, indent=2, ensure_ascii=False) + "\n"
    )
    for key, value in summary.items():
        print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
