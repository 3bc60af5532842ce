"""The Ollama client, against a stand-in for Ollama.

Ollama itself cannot be installed on the machines these tests run on (nothing
can be downloaded at run time), so ``ollama_compat_server.OllamaCompatServer``
stands in for it: a small Starlette app implementing Ollama's documented
``/api/chat`` (NDJSON stream), ``/api/tags`` and ``/api/embed`` on REAL llama.cpp
inference with SmolLM2-135M, including Ollama's 404 ``{"error": ...}`` for a
model that is not pulled. The answers are generated, not canned. Failure modes
use real sockets: a closed port, a server that never answers, and a tiny
``http.server`` sending broken streams.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiana.config import Settings
from kiana.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    LLMError,
    ModelUnavailableError,
)
from kiana.llm import list_models
from kiana.llm.base import ChatMessage, GenerationOptions, complete
from kiana.llm.ollama import OllamaChatModel, same_model
from llm_helpers import closed_port, scripted_server, silent_server, smollm_path
from ollama_compat_server import OllamaCompatServer

NAME = "smollm2:135m"
QUESTION = [
    ChatMessage("system", "You are a helpful assistant. The boiler service is on 3 June."),
    ChatMessage("user", "When is the boiler service?"),
]
GREEDY = GenerationOptions(max_tokens=16, temperature=0.0, seed=3)


@pytest.fixture(scope="module")
def server() -> Iterator[OllamaCompatServer]:
    srv = OllamaCompatServer(smollm_path(), NAME)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: OllamaCompatServer) -> Iterator[OllamaChatModel]:
    model = OllamaChatModel(NAME, server.base_url, timeout=60)
    yield model
    model.close()


def test_streams_an_answer_with_ollama_fields(
    client: OllamaChatModel, server: OllamaCompatServer
) -> None:
    stream = client.stream(
        QUESTION,
        GenerationOptions(max_tokens=16, temperature=0.1, top_p=0.9, seed=5, stop=("###",)),
    )
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert stream.finish_reason in ("stop", "length")
    usage = stream.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 16
    assert {"total_s", "load_s", "prompt_eval_s", "eval_s", "first_token_s"} <= set(usage.extra)
    sent = server.requests[-1]
    assert sent == {
        "model": NAME,
        "messages": [{"role": m.role, "content": m.content} for m in QUESTION],
        "stream": True,
        "options": {
            "num_predict": 16,
            "temperature": 0.1,
            "top_p": 0.9,
            "seed": 5,
            "stop": ["###"],
        },
    }


def test_max_tokens_ends_with_done_reason_length(client: OllamaChatModel) -> None:
    result = complete(
        client,
        [ChatMessage("user", "Count from 1 to 100.")],
        GenerationOptions(max_tokens=4, temperature=0),
    )
    assert result.finish_reason == "length" and result.usage.completion_tokens <= 4


def test_same_seed_and_temperature_zero_give_the_same_answer(client: OllamaChatModel) -> None:
    first = complete(client, QUESTION, GREEDY).text
    assert first.strip() and first == complete(client, QUESTION, GREEDY).text


def test_keep_alive_is_sent_when_set(server: OllamaCompatServer) -> None:
    model = OllamaChatModel(NAME, server.base_url, keep_alive="30m")
    try:
        complete(model, QUESTION, GenerationOptions(max_tokens=2))
        assert server.requests[-1]["keep_alive"] == "30m"
    finally:
        model.close()


def test_lists_the_pulled_models(client: OllamaChatModel, server: OllamaCompatServer) -> None:
    (info,) = client.list_models()
    assert (info.backend, info.name, info.available, info.selected) == ("ollama", NAME, True, True)
    assert info.size_bytes == smollm_path().stat().st_size
    assert info.detail == f"135M Q4_1 on {server.base_url}"
    assert client.info() == info


def test_a_model_that_is_not_pulled(server: OllamaCompatServer) -> None:
    missing = OllamaChatModel("llama3", server.base_url)
    try:
        with pytest.raises(ModelUnavailableError) as info:
            list(missing.stream(QUESTION, GREEDY))
        assert info.value.message == (
            f"Ollama at {server.base_url} has no model 'llama3':"
            ' model "llama3" not found, try pulling it first'
        )
        described = missing.info()
        assert not described.available and "ollama pull llama3" in described.detail
        assert NAME in described.detail
        with pytest.raises(ModelUnavailableError):
            missing.embed("hello")
    finally:
        missing.close()


def test_names_without_a_tag_mean_latest() -> None:
    assert same_model("llama3", "llama3:latest") and same_model("llama3:latest", "llama3")
    assert not same_model("smollm2", NAME)


def test_embeddings(client: OllamaChatModel) -> None:
    vectors = client.embed(["The boiler service is on 3 June.", "Mum's birthday is in March."])
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) == 576
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-3) for v in vectors)
    assert vectors[0] != vectors[1]
    (single,) = client.embed("The boiler service is on 3 June.")
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(single, vectors[0], strict=True))


def test_cancel_after_the_first_piece(client: OllamaChatModel) -> None:
    cancel = threading.Event()
    stream = client.stream(QUESTION, GenerationOptions(max_tokens=200), cancel)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        cancel.set()
    assert len(pieces) == 1 and stream.finish_reason == "cancelled"
    assert complete(client, QUESTION, GREEDY).text.strip()


def test_server_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    model = OllamaChatModel(NAME, url, timeout=5)
    try:
        with pytest.raises(BackendUnavailableError) as info:
            list(model.stream(QUESTION, GREEDY))
        assert (
            info.value.message
            == f"cannot connect to Ollama at {url}: connection refused; is it running?"
        )
        with pytest.raises(BackendUnavailableError):
            model.embed("x")
    finally:
        model.close()
    settings = Settings(home=tmp_path, chat_backend="ollama", chat_url=url, chat_model=NAME)
    (entry,) = list_models(settings)
    assert (entry.name, entry.available, entry.selected) == (NAME, False, True)
    assert "connection refused" in entry.detail


def test_list_models_through_the_settings(server: OllamaCompatServer, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, chat_backend="ollama", chat_url=server.base_url, chat_model="llama3"
    )
    infos = list_models(settings)
    assert [(i.name, i.available, i.selected) for i in infos] == [
        (NAME, True, False),
        ("llama3", False, True),
    ]


def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as url:
        model = OllamaChatModel(NAME, url, timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(BackendTimeoutError, match=f"Ollama at {url} did not answer within"):
                list(model.stream(QUESTION, GREEDY))
            assert time.monotonic() - started < 3
        finally:
            model.close()


def test_cancel_while_the_server_is_silent() -> None:
    with silent_server() as url:
        model = OllamaChatModel(NAME, url, timeout=30)
        cancel = threading.Event()
        timer = threading.Timer(0.2, cancel.set)
        try:
            started = time.monotonic()
            timer.start()
            stream = model.stream(QUESTION, GREEDY, cancel)
            assert list(stream) == [] and stream.finish_reason == "cancelled"
            assert time.monotonic() - started < 2
        finally:
            timer.cancel()
            model.close()


def test_broken_streams_are_llm_errors() -> None:
    ndjson = "application/x-ndjson"
    piece = b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi"},"done":false}\n'
    cases = [
        ((200, ndjson, piece + b"{oops\n"), "invalid JSON in its stream (line 2"),
        (
            (200, ndjson, piece + b'{"error": "llama runner process has terminated"}\n'),
            "failed mid-answer: llama runner process has terminated",
        ),
        ((200, ndjson, piece), "ended the answer without a final 'done' object"),
        (
            (500, "application/json", b'{"error": "out of memory"}'),
            "answered HTTP 500: out of memory",
        ),
    ]
    with scripted_server() as (server, url):
        model = OllamaChatModel("m", url, timeout=5)
        try:
            for reply, text in cases:
                server.reply = reply  # type: ignore[attr-defined]
                with pytest.raises(LLMError) as info:
                    list(model.stream(QUESTION, GREEDY))
                assert type(info.value) is LLMError and text in info.value.message, reply
            server.reply = (200, "application/json", b'{"embeddings": [[0.1, 0.2]]}')  # type: ignore[attr-defined]
            with pytest.raises(LLMError, match="did not return 2 embeddings"):
                model.embed(["a", "b"])
            server.reply = (200, "application/json", b'{"models": "nope"}')  # type: ignore[attr-defined]
            with pytest.raises(LLMError, match="sent no 'models' list"):
                model.list_models()
        finally:
            model.close()
