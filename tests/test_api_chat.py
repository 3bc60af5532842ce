"""The assistant over HTTP, on real models: SmolLM2-135M through llama.cpp, MiniLM embeddings.

Answers are checked for mechanics (events, storage, citations, cancellation),
not wording: the test model is tiny. Most tests use the ASGI app in process
(``ApiClient``); those about the event loop and disconnects run uvicorn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api_helpers import ApiClient, error_code
from chat_helpers import (
    Server,
    chat_home,
    model_cache,
    parse_sse,
    require_models,
    running_server,
    sse_events,
)
from kiana.api import create_app, routes_chat, routes_openai
from kiana.api.deps import Runtime
from kiana.config import Settings
from llm_helpers import closed_port

JSON = {"content-type": "application/json"}
BOILER = "The boiler service is on 3 June."


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    require_models()
    return chat_home(tmp_path_factory.mktemp("chat") / "home", model_cache(tmp_path_factory))


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[ApiClient]:
    with ApiClient(create_app(settings), settings) as client:
        yield client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_models()
    home = tmp_path_factory.mktemp("chat-server") / "home"
    with running_server(chat_home(home, model_cache(tmp_path_factory))) as running:
        yield running


def runtime(app: Any) -> Runtime:
    rt = app.state.runtime
    assert isinstance(rt, Runtime)
    return rt


def chat(api: ApiClient, message: str, **fields: Any) -> list[tuple[str, Any]]:
    response = api.post("/api/v1/chat", json={"message": message, "max_tokens": 16, **fields})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


def conversation_count(api: ApiClient) -> int:
    response = api.get("/api/v1/conversations", params={"limit": 500})
    assert response.status_code == 200, response.text
    return len(response.json()["conversations"])


# -- chat ------------------------------------------------------------------------------------


def test_chat_streams_sources_deltas_then_an_answer(api: ApiClient) -> None:
    events = chat(api, "remember that the boiler service is on 3 June")
    assert [name for name, _ in events] == ["learned", "delta", "answer"]
    learned = events[0][1]
    assert learned["created"] is True and learned["block"]["body"] == BOILER
    stored = api.get(f"/api/v1/blocks/{learned['block']['id']}").json()["block"]
    assert stored == learned["block"]  # the full signed record
    assert events[2][1]["conversation_id"].startswith("c-")

    events = chat(api, "when is the boiler service?", temperature=0)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "answer"
    assert set(names[1:-1]) == {"delta"} and len(names) > 2
    sources = events[0][1]["items"]
    assert sources[0]["id"] == stored["id"] and sources[0]["n"] == 1
    assert sources[0]["text"] == BOILER and sources[0]["similarity"] > 0.4
    assert sources[0]["author"] == stored["author"] and sources[0]["kind"] == "fact"
    answer = events[-1][1]
    assert answer["text"] == "".join(data["text"] for _, data in events[1:-1]).strip()
    assert answer["cancelled"] is False and answer["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] >= 1 and answer["usage"]["prompt_tokens"] > 100
    assert answer["citations"], answer  # "The boiler service is ..." repeats entry [1]
    for citation in answer["citations"]:
        block = api.get(f"/api/v1/blocks/{citation['block']['id']}").json()["block"]
        assert citation["block"] == block
        prov = citation["provenance"]
        assert prov["valid"] is True and prov["author"] == block["author"]
        assert prov["author_name"] == "test-device" and prov["role"] == "authority"


def test_chat_filters_and_no_memory(api: ApiClient) -> None:
    events = chat(api, "When is the boiler serviced?", kind="note", max_tokens=1)
    assert events[0] == ("sources", {"items": []})  # the boiler fact is not a note
    events = chat(api, "When is the boiler serviced?", use_memory=False, max_tokens=1)
    assert events[0] == ("sources", {"items": []})
    events = chat(api, "remember that the car is blue", learn=False, use_memory=False, max_tokens=1)
    assert "learned" not in [name for name, _ in events]


def test_conversations(api: ApiClient) -> None:
    before = conversation_count(api)
    first = api.post(
        "/api/v1/chat",
        json={"message": "When is the boiler serviced?", "stream": False, "max_tokens": 8},
    )
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    body = first.json()
    assert body["text"] and body["cancelled"] is False and body["learned"] == []
    assert body["sources"][0]["text"] == BOILER
    conv_id = body["conversation_id"]

    follow = api.post(
        "/api/v1/chat",
        json={"message": "And why?", "conversation_id": conv_id, "stream": False, "max_tokens": 4},
    )
    assert follow.status_code == 200, follow.text
    assert follow.json()["conversation_id"] == conv_id
    assert conversation_count(api) == before + 1

    listed = api.get("/api/v1/conversations").json()["conversations"]
    assert listed[0]["id"] == conv_id  # most recently used first
    assert listed[0]["title"] == "When is the boiler serviced?"
    full = api.get(f"/api/v1/conversations/{conv_id}").json()
    assert [t["role"] for t in full["turns"]] == ["user", "assistant", "user", "assistant"]
    assert [t["content"] for t in full["turns"][::2]] == [
        "When is the boiler serviced?",
        "And why?",
    ]
    assert full["turns"][1]["content"] == body["text"]

    assert api.delete(f"/api/v1/conversations/{conv_id}").json() == {"id": conv_id, "deleted": True}
    for response in (
        api.get(f"/api/v1/conversations/{conv_id}"),
        api.delete(f"/api/v1/conversations/{conv_id}"),
        api.post("/api/v1/chat", json={"message": "hi", "conversation_id": conv_id}),
    ):
        assert (response.status_code, error_code(response)) == (404, "not_found")
    assert api.get("/api/v1/conversations/not-an-id").status_code == 422
    assert conversation_count(api) == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"message": ""}, 400, "invalid_input"),
        ({"message": "   \n "}, 400, "invalid_input"),
        ({"message": "x" * 8001}, 400, "invalid_input"),
        ({"message": "x" * 1_000_000}, 400, "invalid_input"),
        ({"message": "hi", "conversation_id": "c-0000000000000000"}, 404, "not_found"),
        ({"message": "hi", "conversation_id": "nope"}, 400, "invalid_input"),
        ({"message": "hi", "stream": False, "conversation_id": "c-1"}, 404, "not_found"),
        ({"message": 5}, 422, "invalid_request"),
        ({"text": "hi"}, 422, "invalid_request"),
        ({"message": "hi", "surprise": 1}, 422, "invalid_request"),
        ({"message": "hi", "max_tokens": 0}, 422, "invalid_request"),
        ({"message": "hi", "kind": "poem"}, 422, "invalid_request"),
        (b'{"message": "\\ud800"}', 422, "invalid_request"),
        (b'{"message": "hi"', 400, "invalid_json"),
        (b"", 422, "invalid_request"),
    ],
)
def test_bad_chat_requests_are_4xx_and_store_nothing(
    api: ApiClient, body: Any, status: int, code: str
) -> None:
    before = conversation_count(api)
    if isinstance(body, bytes):
        response = api.post("/api/v1/chat", content=body, headers=JSON)
    else:
        response = api.post("/api/v1/chat", json=body)
    assert (response.status_code, error_code(response)) == (status, code), response.text
    assert conversation_count(api) == before
    assert api.get("/readyz", token=None).status_code == 200


def test_a_request_over_the_body_limit_is_413(api: ApiClient) -> None:
    response = api.post("/api/v1/chat", json={"message": "x" * (2 * 1024 * 1024)})
    assert (response.status_code, error_code(response)) == (413, "request_too_large")


def test_backend_down_is_a_clear_503(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_models()
    url = f"http://127.0.0.1:{closed_port()}/v1"
    settings = chat_home(
        tmp_path_factory.mktemp("down") / "home",
        model_cache(tmp_path_factory),
        KIANA_CHAT_BACKEND="openai",
        KIANA_CHAT_URL=url,
        KIANA_CHAT_TIMEOUT="5",
    )
    with ApiClient(create_app(settings), settings) as api:
        for stream in (True, False):
            response = api.post("/api/v1/chat", json={"message": "Hello?", "stream": stream})
            assert response.status_code == 503, response.text
            assert error_code(response) == "backend_unavailable"
            assert "127.0.0.1" in response.json()["error"]["message"]
        assert conversation_count(api) == 0  # a failed answer leaves no empty conversation
        # "remember that" needs no model: it still works.
        events = chat(api, "remember that the printer is in the attic")
        assert [name for name, _ in events] == ["learned", "delta", "answer"]
        models = api.get("/api/v1/models").json()
        assert models["chat"]["backend"] == "openai"
        [info] = models["chat"]["models"]
        assert info["available"] is False and info["selected"] is True and info["detail"]
        response = api.post(
            "/v1/chat/completions",
            json={"model": "kiana", "messages": [{"role": "user", "content": "Hello?"}]},
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("backend_unavailable", "server_error")

        # A response that has started (the first token is slow) reports the error as an event.
        monkeypatch.setattr(routes_chat, "HEAD_WAIT_S", 0.0)
        monkeypatch.setattr(routes_openai, "HEAD_WAIT_S", 0.0)
        events = chat(api, "Hello?", use_memory=False)
        assert events[0] == ("sources", {"items": []})
        assert events[-1][0] == "error" and events[-1][1]["code"] == "backend_unavailable"
        response = api.post(
            "/v1/chat/completions",
            json={"model": "kiana", "stream": True, "messages": [{"role": "user", "content": "?"}]},
        )
        assert response.status_code == 200
        chunks = [data for _, data in parse_sse(response.text)]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["error"]["code"] == "backend_unavailable"
        assert api.get("/readyz", token=None).status_code == 200


# -- models and vectors ------------------------------------------------------------------------


def test_models_and_reindex(api: ApiClient) -> None:
    models = api.get("/api/v1/models")
    assert models.status_code == 200, models.text
    body = models.json()
    assert body["chat"]["backend"] == "embedded"
    assert body["chat"]["model"] == "smollm2-135m-instruct"
    [selected] = [m for m in body["chat"]["models"] if m["selected"]]
    assert selected["name"] == "smollm2-135m-instruct" and selected["available"] is True
    embeddings = body["embeddings"]
    assert embeddings["available"] is True
    assert (embeddings["model"], embeddings["dim"]) == ("all-minilm-l6-v2", 384)

    node = runtime(api.app).node
    node.auto_embed = False  # the next block is stored without its vector
    try:
        created = api.post("/api/v1/blocks", json={"text": "The attic key is in the blue jar."})
        assert created.status_code == 201
    finally:
        node.auto_embed = True
    before = api.get("/api/v1/models").json()["embeddings"]
    assert before["missing"] == 1
    report = api.post("/api/v1/reindex")
    assert report.status_code == 200, report.text
    assert report.json()["model"] == "all-minilm-l6-v2"
    assert (report.json()["embedded"], report.json()["missing_before"]) == (1, 1)
    after = api.get("/api/v1/models").json()["embeddings"]
    assert (after["missing"], after["vectors"]) == (0, before["vectors"] + 1)


# -- a real server: the event loop and disconnects -------------------------------------------

COUNTING = "Count from 1 to 1000, separated by commas."


def test_the_event_loop_is_not_blocked_while_an_answer_streams(server: Server) -> None:
    body = {"message": COUNTING, "max_tokens": 200, "use_memory": False, "temperature": 0}
    with server.client() as client, httpx.Client(base_url=server.url, timeout=10) as probe:
        with client.stream("POST", "/api/v1/chat", json=body) as response:
            assert response.status_code == 200
            events = sse_events(response.iter_lines())
            assert next(name for name, _ in events if name == "delta")
            timings = []
            for _ in range(5):
                started = time.monotonic()
                assert probe.get("/healthz").json() == {"status": "ok"}
                timings.append(time.monotonic() - started)
            # The answer was still being generated all along.
            assert next(events)[0] == "delta"
        assert max(timings) < 0.5, timings


def test_a_client_disconnect_cancels_the_generation(server: Server) -> None:
    rt = runtime(server.app)
    body = {"message": COUNTING, "max_tokens": 200, "use_memory": False, "temperature": 0}
    with server.client() as client:
        with client.stream("POST", "/api/v1/chat", json=body) as response:
            deltas = 0
            for name, _ in sse_events(response.iter_lines()):
                assert name != "answer"
                deltas += name == "delta"
                if deltas == 3:
                    break
            assert rt.chat.running == 1
        # Leaving the block closed the connection mid-answer.
        deadline = time.monotonic() + 10
        while rt.chat.running:
            assert time.monotonic() < deadline, "the generation did not stop"
            time.sleep(0.02)
        started = time.monotonic()
        again = client.post(
            "/api/v1/chat",
            json={"message": "Say hi.", "max_tokens": 2, "use_memory": False, "stream": False},
        )
        assert again.status_code == 200 and time.monotonic() - started < 10
        cut = client.get("/api/v1/conversations").json()["conversations"][1]
        turns = client.get(f"/api/v1/conversations/{cut['id']}").json()["turns"]
    assert turns[0]["content"] == COUNTING
    # The partial answer was kept; generation stopped long before 200 tokens.
    assert len(turns[1]["content"].split(",")) < 40, turns[1]["content"]


def test_a_client_disconnect_cancels_a_non_streaming_answer(server: Server) -> None:
    rt = runtime(server.app)
    body = {"message": COUNTING, "max_tokens": 200, "use_memory": False, "stream": False}
    timeout = httpx.Timeout(30, read=1.0)
    impatient = httpx.Client(base_url=server.url, headers=server.auth, timeout=timeout)
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/api/v1/chat", json=body)
    deadline = time.monotonic() + 10
    while rt.chat.running:
        assert time.monotonic() < deadline, "the generation did not stop"
        time.sleep(0.02)
    with server.client() as client:
        newest = client.get("/api/v1/conversations").json()["conversations"][0]
        turns = client.get(f"/api/v1/conversations/{newest['id']}").json()["turns"]
    assert turns[0]["content"] == COUNTING
    assert len(turns[1]["content"].split(",")) < 40, turns[1]["content"]


def test_shutdown_cancels_a_running_answer(settings: Settings) -> None:
    app = create_app(settings)
    started = threading.Event()
    with ApiClient(app, settings) as api:
        rt = runtime(app)

        async def start() -> Any:
            assistant = await rt.chat.assistant()
            events = rt.chat.run(
                lambda cancel: assistant.ask(COUNTING, use_memory=False, store=False, cancel=cancel)
            )
            started.set()
            return events

        events = api.portal.call(start)
        assert started.is_set() and rt.chat.running == 1
    # The lifespan ended: the answer was cancelled and the model closed.
    assert events.cancel.is_set() and rt.chat.running == 0
    assert not rt.chat.assistant_built
