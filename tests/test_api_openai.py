"""The OpenAI-compatible API (``/v1``), driven by the official ``openai`` client against a
real uvicorn server, on real models (SmolLM2-135M, MiniLM)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat_helpers import Server, chat_home, model_cache, require_models, running_server
from kiana.assistant.prompt import SYSTEM_PROMPT, build_chat_messages
from kiana.llm.base import ChatMessage

openai = pytest.importorskip("openai")

BOILER = "The boiler service is on 3 June."
QUESTION = [{"role": "user", "content": "When is the boiler serviced?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_models()
    home = tmp_path_factory.mktemp("openai") / "home"
    with running_server(chat_home(home, model_cache(tmp_path_factory))) as running:
        with running.client() as client:
            for text in (BOILER, "Mum's birthday is 14 March."):
                assert client.post("/api/v1/blocks", json={"text": text}).status_code == 201
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0) as c:
        yield c


def kiana_extra(obj: Any) -> dict[str, Any]:
    extra: dict[str, Any] = (obj.model_extra or {})["kiana"]
    return extra


def test_models_list(client: Any) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == ["kiana", "smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert all(m.object == "model" and m.created > 1_600_000_000 for m in models)
    assert [m.owned_by for m in models] == ["kiana", "embedded", "kiana"]


def test_chat_completion(client: Any) -> None:
    completion = client.chat.completions.create(
        model="kiana", messages=QUESTION, max_tokens=12, temperature=0, seed=1
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "kiana"
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 100 and 1 <= usage.completion_tokens <= 14
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = kiana_extra(completion)
    assert extra["memory"] is True
    assert extra["sources"][0]["text"] == BOILER
    for citation in extra["citations"]:
        assert citation["provenance"]["valid"] is True and citation["block"]["sig"]

    again = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, max_tokens=12, temperature=0, seed=1
    )
    assert again.choices[0].message.content == choice.message.content  # same model, same prompt


def test_chat_completion_streams_chunks(client: Any) -> None:
    stream = client.chat.completions.create(
        model="kiana",
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason in ("stop", "length")
    assert kiana_extra(finishing[0])["sources"][0]["text"] == BOILER
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens >= 1


def test_memory_injection_can_be_turned_off(client: Any, server: Server) -> None:
    def ask(**kwargs: Any) -> Any:
        return client.chat.completions.create(
            model="kiana", messages=QUESTION, max_tokens=1, temperature=0, **kwargs
        )

    with_memory = ask()
    assert [s["text"] for s in kiana_extra(with_memory)["sources"]][:1] == [BOILER]
    without = ask(extra_body={"kiana": {"memory": False}})
    header_off = ask(extra_headers={"X-KIANA-Memory": "off"})
    for reply in (without, header_off):
        assert kiana_extra(reply) == {"memory": False, "sources": [], "citations": []}
        # The memory section (and KI_ana's system prompt) made the prompt longer.
        assert reply.usage.prompt_tokens < with_memory.usage.prompt_tokens - 50
    body_wins = ask(extra_body={"kiana": {"memory": True}}, extra_headers={"X-KIANA-Memory": "0"})
    assert kiana_extra(body_wins)["sources"]
    filtered = ask(extra_body={"kiana": {"kind": "note"}})
    assert kiana_extra(filtered) == {"memory": True, "sources": [], "citations": []}
    with pytest.raises(openai.BadRequestError):
        ask(extra_headers={"X-KIANA-Memory": "maybe"})


def test_clients_system_message_follows_kianas() -> None:
    messages = [
        ChatMessage("system", "Answer in French."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Bonjour"),
        ChatMessage("user", "When is the boiler serviced?"),
    ]
    built = build_chat_messages(messages, [])
    assert [m.role for m in built] == ["system", "user", "assistant", "user"]
    assert built[0].content == f"{SYSTEM_PROMPT}\n\nAnswer in French."
    assert built[1:3] == messages[1:3]
    assert built[3].content.startswith("<memory>")
    assert built[3].content.endswith("Question: When is the boiler serviced?")


def test_embeddings(client: Any, server: Server) -> None:
    texts = [
        "The boiler is serviced in June.",
        "When is the boiler service?",
        "Bananas are yellow.",
    ]
    result = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # base64 on the wire
    assert result.model == "all-minilm-l6-v2" and [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, abs_tol=1e-4) for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2
    floats = client.embeddings.create(
        model="kiana", input=texts[0], encoding_format="float", dimensions=384
    )
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert floats.usage.prompt_tokens > 0
    for bad in ({"input": ""}, {"input": [1, 2, 3]}, {"input": []}, {"dimensions": 128}):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(**{"model": "all-minilm-l6-v2", "input": "x", **bad})
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_wrong_api_key_is_an_authentication_error(server: Server) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.code == "unauthorized"
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="kiana", messages=QUESTION)


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
        {"messages": [{"role": "assistant", "content": "only me"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"n": 2},
        {"temperature": 5},
        {"max_tokens": 0},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"extra_body": {"kiana": {"memory": "perhaps"}}},
        {"extra_body": {"kiana": {"surprise": True}}},
    ],
)
def test_malformed_requests_are_bad_requests(client: Any, fields: dict[str, Any]) -> None:
    request = {"model": "kiana", "messages": QUESTION, "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**request)
    assert info.value.code in ("invalid_request", "invalid_input")
    assert info.value.type == "invalid_request_error"


def test_errors_are_openai_shaped(server: Server, client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert info.value.code == "model_not_found"
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as raw:
        for response in (
            raw.post(
                "/v1/chat/completions",
                content=b'{"model": "kiana", "messages": [',
                headers={"content-type": "application/json"},
            ),
            raw.post("/v1/chat/completions", json={"model": "kiana", "messages": "hi"}),
            raw.get("/v1/completions"),
            raw.get("/v1/models", headers={"Authorization": "Bearer nope"}),
        ):
            assert 400 <= response.status_code < 500
            error = response.json()["error"]
            assert set(error) >= {"message", "type", "param", "code"}
            assert isinstance(error["code"], str) and error["message"]
        assert raw.get("/readyz").status_code == 200
