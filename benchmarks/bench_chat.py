"""Benchmark the embedded chat backend against raw llama-cpp-python in the same run.

Usage::

    .venv/bin/python benchmarks/bench_chat.py [--models qwen2.5-coder-1.5b-instruct,...]
        [--cache-dir DIR] [--threads N] [--max-tokens 128] [--rounds 3]
        [--out benchmarks/results/chat.json]

Each model is measured in its own child process (so its peak RSS is its own):

- **load**: resolving the registry model (sha256 record check, or assembly on
  the very first run) and creating the ``llama_cpp.Llama``.
- **time to first token** of a typical RAG turn, built like the assistant's
  prompts: the fixed system prompt, then a user message with a ``<memory>``
  section of 5 short facts and a question. The first turn is cold (nothing
  cached); the following turns keep the system prompt but change facts and
  question, as retrieval does, so only the system prompt's KV cache can be
  reused. A control turn re-evaluates the whole prompt (``Llama.reset()``)
  to show what the reuse saves.
- **decode speed**: tokens/s through ``EmbeddedChatModel.stream`` against raw
  ``Llama.create_chat_completion(stream=True)`` on a second, plain ``Llama``
  of the same file with the same settings (no KI_ana chat handler, no abort
  callback), same prompt, greedy, interleaved round by round (alternating who
  goes first) so a noisy neighbour hits both alike. The ratio is the median of
  the per-round ratios; it is the number to compare between runs.
  Each call also records the process CPU time per token: it moves far less
  than wall time when other jobs share the machine, and its ratio (raw /
  KI_ana) is the fairer overhead measure on a busy machine.
- **peak RSS** (``VmHWM``) of the process with KI_ana's model only, measured
  before the baseline ``Llama`` is created; and RSS right after loading.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kiana.config import load_settings
from kiana.llm.base import ChatMessage, GenerationOptions
from kiana.llm.embedded import EmbeddedChatModel
from kiana.llm.registry import DEFAULT_MODEL, get_spec

ROOT = Path(__file__).resolve().parent
TARGET_TTFT_S = 2.0
TARGET_RATIO = 0.90

try:
    from kiana.assistant.prompt import SYSTEM_PROMPT
except ImportError:  # the assistant is optional for this benchmark
    SYSTEM_PROMPT = (
        "You are KI_ana, a personal assistant with a long-term memory. Answer briefly from the"
        " numbered <memory> entries in the user's message and cite them like [1]."
    )

TURNS: list[tuple[list[str], str]] = [
    (
        [
            "The boiler service is booked for 3 June with Heizung Meyer.",
            "The wifi password for the guest network is blue-otter-42.",
            "Mum's birthday is on 14 March; she would like a cookbook.",
            "The car's next inspection (TÜV) is due in September.",
            "Bin collection: paper on Mondays, plastic every second Thursday.",
        ],
        "When is the boiler service, and who does it?",
    ),
    (
        [
            "Lena's swimming lessons are on Wednesdays at 16:30.",
            "The spare house key is with the neighbours at number 12.",
            "The dentist is Dr. Brandt, phone 030 1234567.",
            "We pay 42 euros a month for the electricity contract.",
            "The insurance renewal letter arrived on 2 May.",
        ],
        "Who has the spare house key?",
    ),
    (
        [
            "Grandpa's flight lands at 14:05 on Friday, terminal 1.",
            "The library books are due back on 20 June.",
            "Our internet provider's hotline is open until 22:00.",
            "The plumber said the kitchen tap needs a new cartridge.",
            "The school trip costs 35 euros, to be paid by Monday.",
        ],
        "When does Grandpa's flight land?",
    ),
    (
        [
            "The cat's vaccination is due in October at the Tierarztpraxis Nord.",
            "Tom's football training moved to Tuesdays.",
            "The garage door code is 4711.",
            "We still owe Anna 25 euros for the concert tickets.",
            "The window cleaner comes every first Saturday of the month.",
        ],
        "How much do we owe Anna, and for what?",
    ),
]
THROUGHPUT_PROMPT = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage(
        "user",
        "Explain in detail, step by step, how a heat pump heats a house in winter."
        " Write at least 300 words.",
    ),
]


def rag_messages(facts: list[str], question: str) -> list[ChatMessage]:
    memory = "\n".join(f"[{n}] (fact, 2026-05-0{n}) {f}" for n, f in enumerate(facts, start=1))
    return [
        ChatMessage("system", SYSTEM_PROMPT),
        ChatMessage("user", f"<memory>\n{memory}\n</memory>\n\nQuestion: {question}"),
    ]


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ttft_turn(
    model: EmbeddedChatModel, messages: list[ChatMessage], max_tokens: int
) -> dict[str, Any]:
    cpu0 = time.process_time()
    first_cpu = float("nan")
    stream = model.stream(messages, GenerationOptions(max_tokens=max_tokens, temperature=0.0))
    pieces = []
    for piece in stream:
        if not pieces:
            first_cpu = time.process_time() - cpu0
        pieces.append(piece)
    extra = stream.usage.extra
    return {
        "first_token_s": round(extra.get("first_token_s", float("nan")), 3),
        "first_token_cpu_s": round(first_cpu, 3),
        "total_s": round(extra["total_s"], 3),
        "prompt_tokens": stream.usage.prompt_tokens,
        "cached_prompt_tokens": int(extra["cached_prompt_tokens"]),
        "completion_tokens": stream.usage.completion_tokens,
        "answer_chars": len("".join(pieces)),
    }


def decode_rate(pieces_at: list[float]) -> float:
    """Pieces per second after the first one (one piece per token in both paths)."""
    if len(pieces_at) < 2 or pieces_at[-1] <= pieces_at[0]:
        return float("nan")
    return (len(pieces_at) - 1) / (pieces_at[-1] - pieces_at[0])


def measured(pieces: Any) -> dict[str, float]:
    """Consume ``pieces`` (truthy items only count), timing each one."""
    started, cpu0 = time.perf_counter(), time.process_time()
    times = [time.perf_counter() for piece in pieces if piece]
    cpu = time.process_time() - cpu0
    return {
        "tokens": len(times),
        "tok_s": decode_rate(times),
        "first_s": times[0] - started,
        "cpu_ms_per_token": 1000 * cpu / max(len(times), 1),
    }


def run_ours(model: EmbeddedChatModel, max_tokens: int) -> dict[str, float]:
    options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, seed=1)
    return measured(model.stream(THROUGHPUT_PROMPT, options))


def run_raw(llm: Any, max_tokens: int) -> dict[str, float]:
    messages = [{"role": m.role, "content": m.content} for m in THROUGHPUT_PROMPT]
    chunks = llm.create_chat_completion(
        messages=messages, stream=True, max_tokens=max_tokens, temperature=0.0, seed=1
    )
    return measured(c["choices"][0]["delta"].get("content") for c in chunks)


def worker(
    name: str, cache_dir: Path, threads: int, context: int, max_tokens: int, rounds: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"model": name, "threads": threads, "context": context}
    rss_before = rss_mib("VmRSS")
    model = EmbeddedChatModel(name, cache_dir, threads=threads, context=context, timeout=600)
    started = time.perf_counter()
    llm = model.load()
    result["load_s"] = round(time.perf_counter() - started, 3)
    result["rss_after_load_mib"] = round(rss_mib("VmRSS"), 1)
    result["rss_before_load_mib"] = round(rss_before, 1)

    turns = [ttft_turn(model, rag_messages(*TURNS[0]), 48)]
    for facts, question in TURNS[1:]:
        turns.append(ttft_turn(model, rag_messages(facts, question), 48))
    llm.reset()  # control: the same kind of turn with nothing cached
    control = ttft_turn(model, rag_messages(*TURNS[1]), 48)
    result["rag"] = {
        "cold": turns[0],
        "warm": turns[1:],
        "warm_first_token_median_s": round(
            statistics.median(t["first_token_s"] for t in turns[1:]), 3
        ),
        "no_reuse_control": control,
    }

    result["peak_rss_mib"] = round(rss_mib("VmHWM"), 1)  # KI_ana alone, before the baseline

    # The baseline: plain llama-cpp-python, a second Llama on the same file with the
    # same settings (weights are mmapped, so they are shared), no KI_ana code at all.
    import llama_cpp

    raw_llm = llama_cpp.Llama(
        model_path=llm.model_path,
        n_ctx=context,
        n_batch=llm.n_batch,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    run_raw(raw_llm, 4)  # both paths: the throughput prompt is now in the KV cache
    run_ours(model, 4)
    ours: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    for i in range(rounds):  # interleaved, alternating who goes first
        for label in ("ours", "raw") if i % 2 == 0 else ("raw", "ours"):
            if label == "ours":
                ours.append(run_ours(model, max_tokens))
            else:
                raw.append(run_raw(raw_llm, max_tokens))
    raw_llm.close()
    paired = [o["tok_s"] / r["tok_s"] for o, r in zip(ours, raw, strict=True)]
    result["decode"] = {
        "max_tokens": max_tokens,
        "rounds": rounds,
        "kiana": ours,
        "raw": raw,
        "kiana_tok_s_median": round(statistics.median(r["tok_s"] for r in ours), 2),
        "raw_tok_s_median": round(statistics.median(r["tok_s"] for r in raw), 2),
        "paired_ratios": [round(x, 3) for x in paired],
        "ratio": round(statistics.median(paired), 3),
        # CPU time per token is far less sensitive to other jobs than wall time.
        "kiana_cpu_ms_per_token_median": round(
            statistics.median(r["cpu_ms_per_token"] for r in ours), 2
        ),
        "raw_cpu_ms_per_token_median": round(
            statistics.median(r["cpu_ms_per_token"] for r in raw), 2
        ),
        "cpu_ratio": round(
            statistics.median(r["cpu_ms_per_token"] for r in raw)
            / statistics.median(r["cpu_ms_per_token"] for r in ours),
            3,
        ),
    }
    model.close()
    return result


def machine() -> dict[str, Any]:
    import llama_cpp

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system": llama_cpp.llama_print_system_info().decode().strip(),
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def table(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = [
        [
            "model",
            "load s",
            "TTFT cold s",
            "TTFT warm s (median)",
            "no-reuse s",
            "cached/prompt tok",
            "KI_ana tok/s",
            "raw tok/s",
            "ratio",
            "CPU ratio",
            "peak RSS MiB",
        ]
    ]
    for r in results:
        rag, dec = r["rag"], r["decode"]
        warm = rag["warm"][0]
        rows.append(
            [
                r["model"],
                f"{r['load_s']:.2f}",
                f"{rag['cold']['first_token_s']:.2f}",
                f"{rag['warm_first_token_median_s']:.2f}",
                f"{rag['no_reuse_control']['first_token_s']:.2f}",
                f"{warm['cached_prompt_tokens']}/{warm['prompt_tokens']}",
                f"{dec['kiana_tok_s_median']:.1f}",
                f"{dec['raw_tok_s_median']:.1f}",
                f"{dec['ratio']:.2f}",
                f"{dec['cpu_ratio']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated registry names")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="model cache (default: the settings')"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "chat.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache_dir = args.cache_dir or load_settings().model_cache_dir

    if args.worker:
        data = worker(
            args.worker, cache_dir, args.threads, args.context, args.max_tokens, args.rounds
        )
        args.worker_out.write_text(json.dumps(data))
        return

    load_start = os.getloadavg()
    results = []
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        get_spec(name)  # fail fast on a typo
        print(f"==> {name}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    name,
                    "--worker-out",
                    str(out),
                    "--cache-dir",
                    str(cache_dir),
                    "--threads",
                    str(args.threads),
                    "--context",
                    str(args.context),
                    "--max-tokens",
                    str(args.max_tokens),
                    "--rounds",
                    str(args.rounds),
                ],
                check=True,
            )
            results.append(json.loads(out.read_text()))
    rows = table(results)
    report = {
        "machine": machine(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "targets": {"rag_first_token_warm_s": TARGET_TTFT_S, "decode_ratio": TARGET_RATIO},
        "system_prompt_chars": len(SYSTEM_PROMPT),
        "results": results,
        "table": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    tmp_out.replace(args.out)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(f"\nload average {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}; JSON: {args.out}")


if __name__ == "__main__":
    main()
