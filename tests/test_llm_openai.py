"""The OpenAI-compatible client against a real server: ``python -m llama_cpp.server``
running SmolLM2-135M on loopback (started once per session, with an API key).

Failure modes use real sockets too: a closed port (connection refused), a
server that accepts and never answers (timeouts, cancel), and a tiny
``http.server`` that answers with error statuses or broken streams.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiana.config import Settings
from kiana.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    LLMError,
    ModelUnavailableError,
)
from kiana.llm import list_models, open_chat_model
from kiana.llm.base import ChatMessage, GenerationOptions, complete
from kiana.llm.openai_compat import OpenAIChatModel
from llm_helpers import closed_port, free_port, scripted_server, silent_server, smollm_path

API_KEY = "test-key-3141"
ALIAS = "smollm2"
QUESTION = [
    ChatMessage("system", "You are a helpful assistant. The boiler service is on 3 June."),
    ChatMessage("user", "When is the boiler service?"),
]
GREEDY = GenerationOptions(max_tokens=16, temperature=0.0, seed=3)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (with /v1) of a real llama.cpp OpenAI-compatible server."""
    model = smollm_path()
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "2",
        "--n_ctx",
        "2048",
        "--api_key",
        API_KEY,
        "--verbose",
        "False",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(trust_env=False, timeout=2) as client:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    headers = {"Authorization": f"Bearer {API_KEY}"}
                    if client.get(f"{base}/models", headers=headers).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def client(llama_server: str) -> Iterator[OpenAIChatModel]:
    model = OpenAIChatModel(ALIAS, llama_server, api_key=API_KEY, timeout=60)
    yield model
    model.close()


def test_streams_an_answer(client: OpenAIChatModel) -> None:
    stream = client.stream(QUESTION, GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert stream.finish_reason in ("stop", "length")
    assert 0 < stream.usage.completion_tokens <= GREEDY.max_tokens
    assert stream.usage.extra["first_token_s"] > 0


def test_complete_collects_the_whole_answer_and_respects_max_tokens(
    client: OpenAIChatModel,
) -> None:
    result = complete(
        client,
        [ChatMessage("user", "Count from 1 to 100.")],
        GenerationOptions(max_tokens=5, temperature=0.0),
    )
    assert result.text.strip() and result.finish_reason == "length"
    assert result.usage.completion_tokens <= 5


def test_same_seed_and_temperature_zero_give_the_same_answer(client: OpenAIChatModel) -> None:
    assert complete(client, QUESTION, GREEDY).text == complete(client, QUESTION, GREEDY).text


def test_lists_the_served_models(client: OpenAIChatModel) -> None:
    models = client.list_models()
    assert [(m.backend, m.name, m.available, m.selected) for m in models] == [
        ("openai", ALIAS, True, True)
    ]
    assert client.info().available


def test_list_models_through_the_settings(llama_server: str, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        chat_backend="openai",
        chat_url=llama_server,
        chat_model=ALIAS,
        chat_api_key=API_KEY,
    )
    assert [(m.name, m.selected) for m in list_models(settings)] == [(ALIAS, True)]
    model = open_chat_model(settings)
    try:
        assert complete(model, QUESTION, GREEDY).text.strip()
    finally:
        model.close()


def test_a_wrong_model_name(llama_server: str) -> None:
    """llama_cpp.server answers with its only model whatever name is asked;
    ``info`` tells the user the name is not one the server lists."""
    wrong = OpenAIChatModel("gpt-4o", llama_server, api_key=API_KEY, timeout=60)
    try:
        info = wrong.info()
        assert not info.available and info.selected
        assert "not listed" in info.detail and ALIAS in info.detail
        assert complete(wrong, QUESTION, GREEDY).text.strip()
    finally:
        wrong.close()


def test_a_wrong_api_key_is_reported(llama_server: str) -> None:
    bad = OpenAIChatModel(ALIAS, llama_server, api_key="wrong", timeout=30)
    try:
        with pytest.raises(LLMError, match=r"refused the request \(HTTP 401.*chat.api_key"):
            list(bad.stream(QUESTION, GREEDY))
    finally:
        bad.close()


def test_cancel_after_the_first_piece(client: OpenAIChatModel) -> None:
    cancel = threading.Event()
    stream = client.stream(QUESTION, GenerationOptions(max_tokens=200), cancel)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        cancel.set()
    assert len(pieces) == 1 and stream.finish_reason == "cancelled"
    assert complete(client, QUESTION, GREEDY).text.strip()  # the server is fine afterwards


def test_server_down_is_backend_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    model = OpenAIChatModel(ALIAS, url, timeout=5)
    try:
        with pytest.raises(BackendUnavailableError) as info:
            list(model.stream(QUESTION, GREEDY))
        assert url in info.value.message and "connection refused" in info.value.message
        assert info.value.http_status == 503
        with pytest.raises(BackendUnavailableError):
            model.list_models()
        assert not model.info().available
    finally:
        model.close()


def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as url:
        model = OpenAIChatModel(ALIAS, url + "/v1", timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(BackendTimeoutError, match="did not answer within") as info:
                list(model.stream(QUESTION, GREEDY))
            assert time.monotonic() - started < 3
            assert info.value.http_status == 504
            with pytest.raises(BackendTimeoutError):
                model.list_models()
        finally:
            model.close()


def test_cancel_while_waiting_for_the_first_byte() -> None:
    with silent_server() as url:
        model = OpenAIChatModel(ALIAS, url + "/v1", timeout=30)
        cancel = threading.Event()
        timer = threading.Timer(0.2, cancel.set)
        try:
            started = time.monotonic()
            timer.start()
            stream = model.stream(QUESTION, GREEDY, cancel)
            assert list(stream) == []
            assert stream.finish_reason == "cancelled"
            assert time.monotonic() - started < 2
        finally:
            timer.cancel()
            model.close()


def test_error_statuses_and_broken_streams_are_mapped() -> None:
    not_found = {"error": {"message": "The model `nope` does not exist", "code": "model_not_found"}}
    cases: list[tuple[tuple[int, str, bytes], type[LLMError], str]] = [
        (
            (404, "application/json", json.dumps(not_found).encode()),
            ModelUnavailableError,
            "has no model 'nope': The model `nope` does not exist",
        ),
        (
            (500, "application/json", b'{"error": {"message": "out of memory"}}'),
            LLMError,
            "HTTP 500: out of memory",
        ),
        ((503, "text/plain", b"loading"), BackendUnavailableError, "unavailable (HTTP 503"),
        (
            (200, "text/event-stream", b"data: {not json}\n\n"),
            LLMError,
            "not a JSON object (line 1",
        ),
        (
            (200, "text/event-stream", b'data: {"error": {"message": "boom"}}\n\n'),
            LLMError,
            "failed mid-answer: boom",
        ),
        (
            (200, "text/event-stream", b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'),
            LLMError,
            "ended the stream before",
        ),
    ]
    with scripted_server() as (server, url):
        model = OpenAIChatModel("nope", url + "/v1", timeout=5)
        try:
            for reply, error, text in cases:
                server.reply = reply  # type: ignore[attr-defined]
                with pytest.raises(error) as info:
                    list(model.stream(QUESTION, GREEDY))
                assert type(info.value) is error and text in info.value.message, reply
        finally:
            model.close()
