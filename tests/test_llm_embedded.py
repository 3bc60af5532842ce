"""The embedded llama.cpp backend, on the real SmolLM2-135M model (small prompts, few tokens)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiana.errors import BackendTimeoutError, ContextOverflowError
from kiana.llm.base import ChatMessage, ChatStream, GenerationOptions, complete
from kiana.llm.embedded import EmbeddedChatModel
from llm_helpers import SMOLLM, smollm_path

SYSTEM = ChatMessage(
    "system",
    "You are KI_ana, a helpful assistant for a family. Answer briefly."
    " Facts you know: the boiler service is on 3 June; the wifi password is blue-otter-42.",
)
GREEDY = GenerationOptions(max_tokens=24, temperature=0.0, seed=7)


def ask(question: str) -> list[ChatMessage]:
    return [SYSTEM, ChatMessage("user", question)]


def long_text(items: int) -> str:
    """About 10 tokens per item."""
    return " ".join(f"item{i} costs {i % 97} euros;" for i in range(items))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedChatModel]:
    smollm_path()  # skip when the test model is not installed
    m = EmbeddedChatModel(
        SMOLLM, tmp_path_factory.mktemp("cache"), threads=2, context=1024, timeout=60
    )
    m.load()
    yield m
    m.close()


def test_streams_text_and_reports_usage(model: EmbeddedChatModel) -> None:
    stream = model.stream(ask("When is the boiler service?"), GREEDY)
    assert isinstance(stream, ChatStream)
    pieces = list(stream)
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).strip()
    assert stream.finish_reason in ("stop", "length")
    usage = stream.usage
    assert usage.prompt_tokens == model.count_prompt_tokens(ask("When is the boiler service?"))
    assert 0 < usage.completion_tokens <= GREEDY.max_tokens + 2
    assert (
        usage.extra["first_token_s"] > 0 and usage.extra["total_s"] >= usage.extra["first_token_s"]
    )
    assert model.name == SMOLLM and model.info().assembled is True


def test_respects_max_tokens(model: EmbeddedChatModel) -> None:
    stream = model.stream(
        ask("Count from 1 to 100, one number per line."),
        GenerationOptions(max_tokens=4, temperature=0.0),
    )
    pieces = list(stream)
    assert 1 <= len(pieces) <= 4  # every piece is at least one token
    assert stream.finish_reason == "length"


def test_is_deterministic_with_a_seed_at_temperature_zero(model: EmbeddedChatModel) -> None:
    first = complete(model, ask("Name three colours."), GREEDY).text
    second = complete(model, ask("Name three colours."), GREEDY).text
    assert first and first == second


def test_reuses_the_kv_cache_of_the_system_prompt(model: EmbeddedChatModel) -> None:
    complete(model, ask("When is the boiler service?"), GenerationOptions(max_tokens=2))
    result = complete(model, ask("What is the wifi password?"), GenerationOptions(max_tokens=2))
    system_tokens = model.count_prompt_tokens([SYSTEM])
    cached = result.usage.extra["cached_prompt_tokens"]
    assert system_tokens - 5 <= cached < result.usage.prompt_tokens


def test_cancel_after_the_first_piece_stops_at_once(model: EmbeddedChatModel) -> None:
    cancel = threading.Event()
    stream = model.stream(
        ask("Write a long story about a dragon."), GenerationOptions(max_tokens=200), cancel
    )
    pieces = []
    for piece in stream:
        pieces.append(piece)
        cancel.set()
    assert len(pieces) == 1
    assert stream.finish_reason == "cancelled"


def test_cancel_interrupts_prompt_evaluation(model: EmbeddedChatModel) -> None:
    """A long prompt takes seconds to evaluate on 2 cores; cancel must not wait for it."""
    messages = [SYSTEM, ChatMessage("user", long_text(80) + " Which item costs 5 euros?")]
    assert 600 < model.count_prompt_tokens(messages) < 1000
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    started = time.monotonic()
    timer.start()
    stream = model.stream(messages, GenerationOptions(max_tokens=300), cancel)
    pieces = list(stream)
    elapsed = time.monotonic() - started
    timer.cancel()
    assert stream.finish_reason == "cancelled"
    assert elapsed < 3.0, f"cancel took {elapsed:.1f} s"
    assert len(pieces) < 300
    # The model is still usable afterwards.
    assert complete(model, ask("When is the boiler service?"), GREEDY).text.strip()


def test_already_cancelled_does_nothing(model: EmbeddedChatModel) -> None:
    cancel = threading.Event()
    cancel.set()
    stream = model.stream(ask("Hello"), GREEDY, cancel)
    assert list(stream) == [] and stream.finish_reason == "cancelled"


def test_a_prompt_longer_than_the_context_is_refused_before_any_work(
    model: EmbeddedChatModel,
) -> None:
    messages = [SYSTEM, ChatMessage("user", long_text(200))]
    started = time.monotonic()
    with pytest.raises(ContextOverflowError) as info:
        list(model.stream(messages, GREEDY))
    assert time.monotonic() - started < 2.0
    assert info.value.code == "context_overflow" and info.value.http_status == 413
    assert "context window is 1024" in info.value.message
    assert f"{model.count_prompt_tokens(messages)} tokens" in info.value.message


def test_one_generation_at_a_time_on_one_model(model: EmbeddedChatModel) -> None:
    question = ask("What is the wifi password?")
    expected = complete(model, question, GREEDY).text
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(complete(model, question, GREEDY).text)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == [expected, expected]


def test_closing_a_stream_half_way_releases_the_model(model: EmbeddedChatModel) -> None:
    stream = model.stream(
        ask("Write a long story about a dragon."), GenerationOptions(max_tokens=100)
    )
    assert next(stream)
    stream.close()
    started = time.monotonic()
    assert complete(model, ask("Hello"), GenerationOptions(max_tokens=2)).text is not None
    assert time.monotonic() - started < 10


def test_stop_sequences_end_the_answer(model: EmbeddedChatModel) -> None:
    options = GenerationOptions(max_tokens=24, temperature=0.0, stop=("5",))
    result = complete(model, ask("Count from 1 to 10 separated by commas."), options)
    assert "5" not in result.text and result.finish_reason == "stop"


def test_no_progress_within_the_timeout_raises(tmp_path: Path) -> None:
    slow = EmbeddedChatModel(SMOLLM, tmp_path, threads=1, context=2048, timeout=0.3)
    try:
        slow.load()
        messages = [SYSTEM, ChatMessage("user", long_text(180))]
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError, match=r"no progress for 0\.3 s"):
            list(slow.stream(messages, GenerationOptions(max_tokens=8)))
        assert time.monotonic() - started < 5
    finally:
        slow.close()
