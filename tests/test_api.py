"""The HTTP API, end to end: a real app and a real node in a temporary home.

Every route has a happy-path test and an authentication test; bad input of
every kind gets a clear 4xx with a stable code, stores nothing, and leaves
the node serving. One test runs uvicorn on a loopback socket.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tests.helpers_cli import QUIET_MESH

from api_helpers import (
    FULL_ID,
    PROTECTED,
    PROTECTED_TEMPLATES,
    ApiClient,
    achunks,
    chunks,
    error_code,
    make_home,
    sign_as,
    signed_block,
)
from kiana.api import create_app
from kiana.api.app import BODY_SLACK
from kiana.api.schemas import Kind, Scope
from kiana.api.serve import StripQueryFilter, check_bind, make_server, serve
from kiana.blocks import KINDS, SCOPES
from kiana.config import Settings, load_settings
from kiana.errors import ConfigError, HomeError, StoreError
from kiana.home import load_identity
from kiana.identity import DeviceKeys
from kiana.node import Node

MAX_BODY = 4096
LIMIT = MAX_BODY + BODY_SLACK
JSON = {"content-type": "application/json"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_home(tmp_path, KIANA_MAX_BODY_BYTES=str(MAX_BODY))


@pytest.fixture
def api(settings: Settings) -> Iterator[ApiClient]:
    with ApiClient(create_app(settings), settings) as client:
        yield client


def remember(api: ApiClient, text: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/api/v1/blocks", json={"text": text, **fields})
    assert response.status_code == 201, response.text
    block: dict[str, Any] = response.json()["block"]
    return block


def assert_unchanged(api: ApiClient, before: dict[str, Any]) -> None:
    """Nothing was stored, and the node still answers."""
    assert api.counts() == before
    assert api.get("/readyz", token=None).status_code == 200


# -- every route is tested ---------------------------------------------------------------

CHAT, OPENAI = "test_api_chat::", "test_api_openai::"  # "module::test": in another module
MESH = "test_api_mesh::"
ROUTE_TESTS = {
    ("GET", "/healthz"): "test_health_routes_are_open",
    ("GET", "/readyz"): "test_health_routes_are_open",
    ("GET", "/openapi.json"): "test_openapi_documents_every_route",
    ("GET", "/docs"): "test_docs_are_open",
    ("GET", "/docs/oauth2-redirect"): "test_docs_are_open",
    ("GET", "/redoc"): "test_docs_are_open",
    ("GET", "/api/v1/status"): "test_status",
    ("GET", "/api/v1/devices"): "test_devices_have_no_private_keys",
    ("POST", "/api/v1/blocks"): "test_remember_then_duplicate",
    ("POST", "/api/v1/blocks/signed"): "test_put_signed_stores_then_duplicate",
    ("GET", "/api/v1/blocks"): "test_list_pagination_and_filters",
    ("GET", "/api/v1/blocks/{block_id}"): "test_get_block_by_id_and_prefix",
    ("GET", "/api/v1/blocks/{block_id}/verify"): "test_verify",
    ("DELETE", "/api/v1/blocks/{block_id}"): "test_erase_flow",
    ("GET", "/api/v1/search"): "test_search",
    ("GET", "/api/v1/export"): "test_export_import_round_trip_is_idempotent",
    ("POST", "/api/v1/import"): "test_import_reports_bad_lines_and_stores_good_ones",
    ("POST", "/api/v1/chat"): CHAT + "test_chat_streams_sources_deltas_then_an_answer",
    ("GET", "/api/v1/conversations"): CHAT + "test_conversations",
    ("GET", "/api/v1/conversations/{conversation_id}"): CHAT + "test_conversations",
    ("DELETE", "/api/v1/conversations/{conversation_id}"): CHAT + "test_conversations",
    ("GET", "/api/v1/models"): CHAT + "test_models_and_reindex",
    ("POST", "/api/v1/reindex"): CHAT + "test_models_and_reindex",
    ("POST", "/api/v1/devices/{device_id}/revoke"): MESH + "test_pair_link_message_ping_and_revoke",
    ("GET", "/api/v1/mesh/peers"): MESH + "test_pair_link_message_ping_and_revoke",
    ("POST", "/api/v1/mesh/peers"): MESH + "test_mesh_routes_reject_bad_input",
    ("POST", "/api/v1/mesh/pairing"): MESH + "test_pair_link_message_ping_and_revoke",
    ("GET", "/api/v1/mesh/pairing/{nameplate}"): MESH + "test_pair_link_message_ping_and_revoke",
    ("POST", "/api/v1/mesh/messages"): MESH + "test_pair_link_message_ping_and_revoke",
    ("GET", "/api/v1/mesh/inbox"): MESH + "test_pair_link_message_ping_and_revoke",
    ("POST", "/api/v1/mesh/ping/{device_id}"): MESH + "test_pair_link_message_ping_and_revoke",
    ("GET", "/api/v1/sync/status"): MESH + "test_pair_link_message_ping_and_revoke",
    ("GET", "/api/v1/ledger"): "test_cli_ledger::test_ledger_routes",
    ("GET", "/api/v1/ledger/verify"): "test_cli_ledger::test_ledger_routes",
    ("POST", "/auth/login"): "test_web_api::test_login_session_csrf_and_logout",
    ("POST", "/auth/logout"): "test_web_api::test_login_session_csrf_and_logout",
    ("GET", "/auth/me"): "test_web_api::test_login_session_csrf_and_logout",
    ("POST", "/api/v1/files"): "test_web_api::test_upload_a_markdown_file",
    ("GET", "/api/v1/events"): "test_web_api::test_events_stream_reports_new_blocks",
    ("POST", "/api/v1/auth/link"): "test_web_api::test_a_one_time_link_logs_in_once",
    ("GET", "/{path:path}"): "test_web_api::test_the_dashboard_is_served_and_matches_its_sources",
    ("GET", "/api/v1/ledger/head"): "test_ledger_service::test_pin_and_ledger_head_routes",
    ("GET", "/api/v1/pins"): "test_ledger_service::test_pin_and_ledger_head_routes",
    ("PUT", "/api/v1/pins/{block_id}"): "test_ledger_service::test_pin_and_ledger_head_routes",
    ("DELETE", "/api/v1/pins/{block_id}"): "test_ledger_service::test_pin_and_ledger_head_routes",
    ("GET", "/v1/models"): OPENAI + "test_models_list",
    ("POST", "/v1/chat/completions"): OPENAI + "test_chat_completion",
    ("POST", "/v1/embeddings"): OPENAI + "test_embeddings",
}


def _flat_routes(app: Any) -> list[tuple[Any, Any]]:
    try:  # FastAPI >= 0.16x keeps included routers lazily; this flattens them.
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        return [(r.path, getattr(r, "methods", None)) for r in app.routes]
    return [(c.path, c.methods) for c in iter_route_contexts(app.routes)]


def test_every_route_has_a_test(settings: Settings) -> None:
    routes = set()
    for path, methods in _flat_routes(create_app(settings)):
        assert methods, f"untested kind of route: {path}"
        routes |= {(method, path) for method in set(methods) - {"HEAD"}}
    assert routes == set(ROUTE_TESTS), "add the new route to ROUTE_TESTS and test it"
    assert {r for r in routes if r[1].startswith("/api/")} == PROTECTED_TEMPLATES
    for name in ROUTE_TESTS.values():
        module, _, test = name.rpartition("::")
        found = vars(importlib.import_module(module)) if module else globals()
        assert callable(found.get(test)), name


# -- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "kwargs"), PROTECTED)
@pytest.mark.parametrize(
    "token", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer ", "bearer"]
)
def test_protected_routes_need_the_token(
    api: ApiClient, method: str, url: str, kwargs: dict[str, Any], token: str | None
) -> None:
    before = api.counts()
    response = api.request(method, url, token=token, **kwargs)
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "secret" not in response.text
    assert_unchanged(api, before)


def test_token_scheme_is_case_insensitive_and_unknown_routes_need_auth(api: ApiClient) -> None:
    assert api.get("/api/v1/status", token=f"bearer {api.token}").status_code == 200
    assert api.get("/api/v1/nope", token=None).status_code == 401
    # Outside /api and /v1 a GET is the dashboard's (public, data-free) files and routes;
    # anything else still needs the token.
    assert api.post("/elsewhere", token=None).status_code == 401
    assert api.get("/elsewhere", token=None).status_code in (200, 404)


def test_health_routes_are_open(api: ApiClient) -> None:
    assert api.get("/healthz", token=None).json() == {"status": "ok"}
    response = api.get("/readyz", token=None)
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_docs_are_open(api: ApiClient) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = api.get(path, token=None)
        assert response.status_code == 200, path
        assert "text/html" in response.headers["content-type"]


def test_openapi_documents_every_route(api: ApiClient) -> None:
    response = api.get("/openapi.json", token=None)
    assert response.status_code == 200
    doc = response.json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {"BlockRecord", "ErrorOut", "ImportOut"} <= set(doc["components"]["schemas"])
    operations = [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]
    assert {(m, p) for m, p, _ in operations} == set(ROUTE_TESTS) - {
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("GET", "/{path:path}"),  # the dashboard's files: not part of the API
    }
    for method, path, op in operations:
        assert op.get("summary"), (method, path)
        if path.startswith("/api/v1"):
            assert op["security"] == [{"bearerAuth": []}]
            assert "401" in op["responses"]
    signed = doc["paths"]["/api/v1/blocks/signed"]["post"]["requestBody"]["content"]
    assert signed["application/json"]["schema"] == {"$ref": "#/components/schemas/BlockRecord"}


def test_require_token_false_opens_the_api(tmp_path: Path) -> None:
    settings = make_home(tmp_path, KIANA_API_REQUIRE_TOKEN="false")
    with ApiClient(create_app(settings), settings) as api:
        assert api.get("/api/v1/status", token=None).status_code == 200


def test_literals_match_the_core() -> None:
    assert set(get_args(Kind)) == KINDS
    assert set(get_args(Scope)) == SCOPES


# -- system ------------------------------------------------------------------------------


def test_status(api: ApiClient) -> None:
    body = api.get("/api/v1/status").json()
    assert body["mind"]["name"] == "Test mind"
    assert body["device"]["name"] == "test-device"
    assert body["storage"]["backend"] == "sqlite"
    assert body["blocks"] == {
        "total": 0,
        "by_kind": {},
        "by_scope": {},
        "erased": 0,
        "tombstones": 0,
    }
    assert body["devices"] == 1


def test_devices_have_no_private_keys(api: ApiClient, settings: Settings) -> None:
    response = api.get("/api/v1/devices")
    assert response.status_code == 200
    keys, _ = load_identity(settings)
    [device] = response.json()["devices"]
    assert device["device_id"] == keys.device_id
    assert device["role"] == "authority"
    assert device["sign_key"] == keys.sign_public.hex()
    assert bytes(keys.signing).hex() not in response.text
    assert bytes(keys.box).hex() not in response.text


def test_readyz_is_503_when_the_store_is_gone(settings: Settings) -> None:
    node = Node.open(settings)
    with ApiClient(create_app(settings, node=node), settings) as api:
        assert api.get("/readyz", token=None).status_code == 200
        node.close()
        response = api.get("/readyz", token=None)
        assert response.status_code == 503
        assert error_code(response) == "not_ready"
        assert api.get("/healthz", token=None).status_code == 200


def test_a_node_passed_in_stays_open_and_an_owned_one_is_closed(settings: Settings) -> None:
    node = Node.open(settings)
    try:
        app = create_app(settings, node=node)
        with ApiClient(app, settings) as api:
            remember(api, "kept open")
        assert node.status()["blocks"]["total"] == 1  # still usable
    finally:
        node.close()
    app = create_app(settings)
    with ApiClient(app, settings) as api:
        owned = api.app.state.runtime.node
    assert app.state.runtime is None
    with pytest.raises(StoreError, match="closed"):
        owned.status()


def test_requests_outside_the_lifespan_get_503(settings: Settings) -> None:
    app = create_app(settings)
    with ApiClient(app, settings):
        pass  # started and stopped again

    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get("/api/v1/status"), await client.get("/readyz")]

    for response in anyio.run(call):
        assert response.status_code == 503
        assert error_code(response) == "not_ready"


def test_lifespan_fails_cleanly_without_a_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "empty", environ=QUIET_MESH)
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(HomeError):
        anyio.run(start)


def test_unexpected_errors_are_json_500(settings: Settings, monkeypatch: Any) -> None:
    node = Node.open(settings)
    try:

        def boom() -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(node, "status", boom)
        app = create_app(settings, node=node)
        with ApiClient(app, settings, raise_app_exceptions=False) as api:
            response = api.get("/api/v1/status")
            assert response.status_code == 500
            assert error_code(response) == "internal_error"
            assert "secret" not in response.text
            assert api.get("/api/v1/devices").status_code == 200
    finally:
        node.close()


def test_unknown_route_and_method(api: ApiClient) -> None:
    response = api.get("/api/v1/nope")
    assert (response.status_code, error_code(response)) == (404, "not_found")
    response = api.request("PUT", "/api/v1/blocks")
    assert (response.status_code, error_code(response)) == (405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


# -- remember ----------------------------------------------------------------------------


def test_remember_then_duplicate(api: ApiClient, settings: Settings) -> None:
    fields = {"kind": "note", "scope": "private", "tags": [" b ", "a", "a"], "title": " T "}
    first = api.post("/api/v1/blocks", json={"text": "  Ada likes tea  ", **fields, "lang": "en"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["created"] is True
    block = body["block"]
    assert block["body"] == "Ada likes tea"
    assert (block["kind"], block["scope"]) == ("note", "private")
    assert block["meta"] == {"tags": ["a", "b"], "title": "T", "lang": "en"}
    assert block["author"] == load_identity(settings)[0].device_id
    assert set(block) == {
        "v",
        "id",
        "kind",
        "scope",
        "body",
        "meta",
        "author",
        "created",
        "refs",
        "sig",
    }

    again = api.post("/api/v1/blocks", json={"text": "Ada likes tea", **fields})
    assert again.status_code == 200
    assert again.json() == {"created": False, "block": block}
    assert api.counts()["total"] == 1

    newer = api.post(
        "/api/v1/blocks", json={"text": "Ada likes green tea", "supersedes": block["id"][:8]}
    )
    assert newer.status_code == 201
    assert newer.json()["block"]["refs"] == [{"rel": "supersedes", "id": block["id"]}]
    assert api.counts()["total"] == 2


BAD_REMEMBER = [
    pytest.param({"text": 42}, 422, "invalid_request", id="wrong-type"),
    pytest.param({"text": ["a"]}, 422, "invalid_request", id="list-text"),
    pytest.param({}, 422, "invalid_request", id="missing-text"),
    pytest.param({"text": ""}, 422, "invalid_request", id="empty-text"),
    pytest.param({"text": "   "}, 400, "invalid_input", id="blank-text"),
    pytest.param({"text": "x", "kind": "gossip"}, 422, "invalid_request", id="unknown-kind"),
    pytest.param({"text": "x", "scope": "world"}, 422, "invalid_request", id="unknown-scope"),
    pytest.param({"text": "x", "extra": 1}, 422, "invalid_request", id="extra-field"),
    pytest.param({"text": "x", "tags": "a"}, 422, "invalid_request", id="tags-not-list"),
    pytest.param({"text": "x", "tags": ["t"] * 65}, 422, "invalid_request", id="too-many-tags"),
    pytest.param({"text": "x", "lang": "english!"}, 422, "invalid_request", id="bad-lang"),
    pytest.param({"text": "x", "supersedes": "zz"}, 422, "invalid_request", id="bad-supersedes"),
    pytest.param({"text": "x", "supersedes": "abcdef"}, 404, "not_found", id="unknown-supersedes"),
    pytest.param({"text": "x" * (MAX_BODY + 1)}, 413, "block_too_large", id="block-too-large"),
    pytest.param({"text": "\ud800 lone"}, 422, "invalid_request", id="lone-surrogate"),
]


@pytest.mark.parametrize(("payload", "status", "code"), BAD_REMEMBER)
def test_remember_rejects_bad_input(
    api: ApiClient, payload: dict[str, Any], status: int, code: str
) -> None:
    before = api.counts()
    response = api.post("/api/v1/blocks", content=json.dumps(payload), headers=JSON)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert_unchanged(api, before)


BAD_BODIES = [
    pytest.param(b'{"text": "x"', JSON, 400, "invalid_json", id="truncated"),
    pytest.param(b"{text: x}", JSON, 400, "invalid_json", id="invalid-json"),
    pytest.param(b"\xff\xfe{}", JSON, 400, "invalid_json", id="bad-utf8"),
    pytest.param(b"[" * 50_000, JSON, 400, "invalid_json", id="deep-nesting"),
    pytest.param(b"[1, 2]", JSON, 422, "invalid_request", id="array"),
    pytest.param(b"", JSON, 422, "invalid_request", id="empty"),
    pytest.param(b'{"text": "x"}', {}, 415, "unsupported_media_type", id="no-content-type"),
    pytest.param(b"x" * (LIMIT + 1), JSON, 413, "request_too_large", id="huge"),
]


@pytest.mark.parametrize(("content", "headers", "status", "code"), BAD_BODIES)
def test_remember_rejects_bad_bodies(
    api: ApiClient, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    before = api.counts()
    response = api.post("/api/v1/blocks", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert len(response.content) < 2000  # the input is never echoed back in full
    assert_unchanged(api, before)


def test_huge_chunked_body_is_cut_off_while_streaming(api: ApiClient) -> None:
    before = api.counts()
    for url in ("/api/v1/blocks", "/api/v1/blocks/signed"):
        response = api.post(url, content=achunks(LIMIT + 1), headers=JSON)
        assert response.status_code == 413, response.text
        assert error_code(response) == "request_too_large"
    assert_unchanged(api, before)


# -- signed blocks -----------------------------------------------------------------------


def test_put_signed_stores_then_duplicate(api: ApiClient, settings: Settings) -> None:
    record = signed_block(settings, "signed elsewhere", tags=["x"], title="t").to_dict()
    first = api.post("/api/v1/blocks/signed", json=record)
    assert first.status_code == 201, first.text
    assert first.json() == {"result": "stored", "block": record}
    again = api.post("/api/v1/blocks/signed", json=record)
    assert again.status_code == 200
    assert again.json()["result"] == "duplicate"
    fetched = api.get(f"/api/v1/blocks/{record['id']}").json()
    assert fetched["block"] == record  # byte-for-byte the signed record
    assert fetched["provenance"]["valid"] is True
    assert api.counts()["total"] == 1


def _mutations(settings: Settings) -> list[tuple[str, Any, int, str]]:
    keys, _ = load_identity(settings)
    other = DeviceKeys.generate()
    good = signed_block(settings, "an honest block").to_dict()

    def changed(**fields: Any) -> dict[str, Any]:
        return {**good, **fields}

    without_sig = {k: v for k, v in good.items() if k != "sig"}
    forged = sign_as(other, keys.device_id, body="forged").to_dict()
    stranger = sign_as(other, other.device_id, body="from a stranger").to_dict()
    big = signed_block(settings, "y" * (MAX_BODY + 1)).to_dict()
    return [
        ("forged-signature", forged, 422, "bad_signature"),
        ("zero-signature", changed(sig="00" * 64), 422, "bad_signature"),
        ("tampered-body", changed(body="an altered block"), 422, "id_mismatch"),
        ("tampered-meta", changed(meta={"title": "new"}), 422, "id_mismatch"),
        ("id-mismatch", changed(id="ab" * 32), 422, "id_mismatch"),
        ("unknown-author", stranger, 422, "unknown_author"),
        ("unknown-kind", changed(kind="rumour"), 422, "unknown_kind"),
        ("unknown-scope", changed(scope="world"), 422, "unknown_kind"),
        ("extra-field", changed(extra=1), 422, "malformed_block"),
        ("extra-meta-field", changed(meta={"color": "red"}), 422, "malformed_block"),
        ("missing-field", without_sig, 422, "malformed_block"),
        ("wrong-type", changed(created="1700000000000"), 422, "malformed_block"),
        ("bool-version", changed(v=True), 422, "malformed_block"),
        ("future-version", changed(v=2), 422, "unknown_format_version"),
        ("short-id", changed(id="abc"), 422, "malformed_block"),
        ("not-an-object", [good], 422, "malformed_block"),
        ("null", None, 422, "malformed_block"),
        ("oversized-block", big, 413, "block_too_large"),
    ]


def test_put_signed_rejects_forgeries_and_malformed_records(
    api: ApiClient, settings: Settings
) -> None:
    before = api.counts()
    for name, record, status, code in _mutations(settings):
        response = api.post("/api/v1/blocks/signed", content=json.dumps(record), headers=JSON)
        assert response.status_code == status, (name, response.text)
        assert error_code(response) == code, name
        assert_unchanged(api, before)
    assert api.all_ids() == []


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        pytest.param(b'{"v": 1, "kind": "fact"', 400, "invalid_json", id="truncated"),
        pytest.param(b"{'v': 1}", 400, "invalid_json", id="invalid-json"),
        pytest.param(b"", 400, "invalid_json", id="empty"),
        pytest.param(b"[" * 50_000, 400, "invalid_json", id="deep-nesting"),
        pytest.param(b'"\\ud800"', 422, "malformed_block", id="string"),
        pytest.param(b"x" * (LIMIT + 1), 413, "request_too_large", id="huge"),
    ],
)
def test_put_signed_rejects_bad_bodies(
    api: ApiClient, content: bytes, status: int, code: str
) -> None:
    before = api.counts()
    response = api.post("/api/v1/blocks/signed", content=content, headers=JSON)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert_unchanged(api, before)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


@hsettings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    field=st.sampled_from(
        ["v", "id", "kind", "scope", "body", "meta", "author", "created", "refs", "sig"]
    ),
    value=JSON_VALUES,
    junk=st.binary(max_size=64),
)
def test_fuzzed_records_never_500_and_are_never_stored(
    api: ApiClient, settings: Settings, field: str, value: Any, junk: bytes
) -> None:
    record = signed_block(settings, "fuzz base").to_dict()
    mutated = {**record, field: value}
    assume(mutated != record)
    before = api.counts()
    for content in (json.dumps(mutated).encode(), junk):
        response = api.post("/api/v1/blocks/signed", content=content, headers=JSON)
        assert 400 <= response.status_code < 500, response.text
        error_code(response)
    for content in (json.dumps({"text": value}).encode(), junk):
        response = api.post("/api/v1/blocks", content=content, headers=JSON)
        assert response.status_code < 500, response.text
    if isinstance(value, str) and value.strip():
        return
    assert_unchanged(api, before)


# -- reading -----------------------------------------------------------------------------


def test_get_block_by_id_and_prefix(api: ApiClient, settings: Settings) -> None:
    block = remember(api, "Grace wrote a compiler", tags=["history"])
    for ident in (block["id"], block["id"][:6], block["id"][:10].upper()):
        response = api.get(f"/api/v1/blocks/{ident}")
        assert response.status_code == 200, ident
        body = response.json()
        assert body["block"] == block
        prov = body["provenance"]
        assert prov["block_id"] == block["id"]
        assert (prov["author_name"], prov["author_role"], prov["valid"]) == (
            "test-device",
            "authority",
            True,
        )
    for ident, status, code in [
        ("0" * 64, 404, "not_found"),
        ("ffffff", 404, "not_found"),
        ("abc", 422, "invalid_request"),
        ("not-hex-at-all", 422, "invalid_request"),
        ("a" * 65, 422, "invalid_request"),
    ]:
        response = api.get(f"/api/v1/blocks/{ident}")
        assert (response.status_code, error_code(response)) == (status, code), ident


def test_verify(api: ApiClient) -> None:
    block = remember(api, "verify me")
    response = api.get(f"/api/v1/blocks/{block['id'][:8]}/verify")
    assert response.status_code == 200
    assert response.json() == {
        "block_id": block["id"],
        "author": block["author"],
        "author_name": "test-device",
        "author_role": "authority",
        "created": block["created"],
        "valid": True,
        "error": "",
    }
    missing = api.get(f"/api/v1/blocks/{FULL_ID}/verify")
    assert (missing.status_code, error_code(missing)) == (404, "not_found")


def test_list_pagination_and_filters(api: ApiClient, settings: Settings) -> None:
    made = [
        remember(api, f"item {i}", kind="note" if i % 2 else "fact", tags=[f"t{i % 3}"])
        for i in range(7)
    ]
    made.append(remember(api, "a private one", scope="private"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = api.get("/api/v1/blocks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [b["id"] for b in reversed(made)]  # newest first, each exactly once

    def ids(**params: Any) -> set[str]:
        response = api.get("/api/v1/blocks", params=params)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    assert ids(kind="note") == {b["id"] for b in made if b["kind"] == "note"}
    assert ids(scope="private") == {made[-1]["id"]}
    assert ids(tag="t0") == {made[i]["id"] for i in (0, 3, 6)}
    assert ids(author=made[0]["author"]) == {b["id"] for b in made}
    assert ids(author="aaaa-aaaa-aaaa-aaaa") == set()
    assert ids(since=made[-1]["created"]) >= {made[-1]["id"]}
    assert ids(until=made[0]["created"]) == set()

    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
        {"kind": "gossip"},
        {"cursor": "nonsense"},
        {"cursor": "1.9999999999999999999"},
        {"since": 2**53},
        {"since": -1},
        {"author": "bad"},
        {"tag": ""},
    ):
        response = api.get("/api/v1/blocks", params=params)
        assert (response.status_code, error_code(response)) == (422, "invalid_request"), params


def test_search(api: ApiClient) -> None:
    tea = remember(api, "Ada drinks green tea every morning", kind="note")
    remember(api, "The compiler was written in 1952")
    response = api.get("/api/v1/search", params={"q": "tea"})
    assert response.status_code == 200
    hits = response.json()["hits"]
    assert [h["block"] for h in hits] == [tea]
    assert isinstance(hits[0]["score"], float)
    assert api.get("/api/v1/search", params={"q": "tea", "kind": "fact"}).json()["hits"] == []
    assert len(api.get("/api/v1/search", params={"q": "the", "limit": 1}).json()["hits"]) <= 1
    for params, status, code in [
        ({}, 422, "invalid_request"),
        ({"q": ""}, 422, "invalid_request"),
        ({"q": "x" * 1001}, 422, "invalid_request"),
        ({"q": "tea", "limit": 101}, 422, "invalid_request"),
        ({"q": "?!"}, 400, "invalid_input"),
    ]:
        response = api.get("/api/v1/search", params=params)
        assert (response.status_code, error_code(response)) == (status, code), params


# -- erasing -----------------------------------------------------------------------------


def test_erase_flow(api: ApiClient, settings: Settings) -> None:
    record = signed_block(settings, "my old address is 12 Elm Street").to_dict()
    assert api.post("/api/v1/blocks/signed", json=record).status_code == 201
    keep = remember(api, "something to keep")

    response = api.delete(f"/api/v1/blocks/{record['id'][:8]}", params={"reason": "moved"})
    assert response.status_code == 200, response.text
    tomb = response.json()
    assert tomb["erases"] == record["id"]
    assert tomb["reason"] == "moved"
    assert set(tomb) == {"v", "id", "erases", "author", "created", "reason", "sig"}

    for url in (f"/api/v1/blocks/{record['id']}", f"/api/v1/blocks/{record['id']}/verify"):
        gone = api.get(url)
        assert (gone.status_code, error_code(gone)) == (410, "erased")
        assert gone.json()["error"]["tombstone"]["id"] == tomb["id"]
        assert "Elm" not in gone.text

    # The erased content is refused if it comes back, and nothing is stored.
    before = api.counts()
    assert before == {
        "total": 1,
        "by_kind": {"fact": 1},
        "by_scope": {"shared": 1},
        "erased": 1,
        "tombstones": 1,
    }
    back = api.post("/api/v1/blocks/signed", json=record)
    assert (back.status_code, error_code(back)) == (410, "erased")
    assert back.json()["error"]["tombstone"]["id"] == tomb["id"]
    assert_unchanged(api, before)

    assert api.all_ids() == [keep["id"]]
    assert api.get("/api/v1/search", params={"q": "Elm"}).json()["hits"] == []
    again = api.delete(f"/api/v1/blocks/{record['id']}")
    assert (again.status_code, again.json()) == (200, tomb)  # idempotent
    assert api.counts() == before
    export = api.get("/api/v1/export").text
    assert "Elm" not in export and tomb["id"] in export

    for ident, status, code in [
        (FULL_ID, 404, "not_found"),
        ("xyz", 422, "invalid_request"),
    ]:
        response = api.delete(f"/api/v1/blocks/{ident}")
        assert (response.status_code, error_code(response)) == (status, code)
    response = api.delete(f"/api/v1/blocks/{keep['id']}", params={"reason": "r" * 1001})
    assert (response.status_code, error_code(response)) == (422, "invalid_request")
    assert_unchanged(api, before)


# -- export and import -------------------------------------------------------------------


def test_export_import_round_trip_is_idempotent(api: ApiClient) -> None:
    for i in range(5):
        remember(api, f"exported fact {i}", tags=["export"])
    victim = remember(api, "to be forgotten")
    assert api.delete(f"/api/v1/blocks/{victim['id']}").status_code == 200
    before = api.counts()

    response = api.get("/api/v1/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [r["type"] for r in lines[:2]] == ["kiana-export", "genesis"]
    assert sum(r["type"] == "block" for r in lines) == 5
    assert sum(r["type"] == "tombstone" for r in lines) == 1

    for _ in range(2):
        result = api.post(
            "/api/v1/import",
            content=response.content,
            headers={"content-type": "application/x-ndjson"},
        )
        assert result.status_code == 200, result.text
        report = result.json()
        assert report["ok"] is True and report["errors"] == []
        assert (report["stored"], report["duplicates"], report["tombstones"]) == (0, 5, 1)
        assert report["lines"] == len(lines)
        assert api.counts() == before


def test_import_reports_bad_lines_and_stores_good_ones(api: ApiClient, settings: Settings) -> None:
    good = signed_block(settings, "imported fact").to_dict()
    tampered = {**signed_block(settings, "tampered").to_dict(), "body": "changed"}
    stranger = DeviceKeys.generate()
    foreign = sign_as(stranger, stranger.device_id, body="foreign").to_dict()
    body = "\n".join(
        [
            json.dumps({"type": "block", "record": good}),
            "{not json",
            json.dumps({"type": "block", "record": tampered}),
            "",
            json.dumps({"type": "block", "record": foreign}),
            json.dumps({"type": "mystery"}),
            json.dumps({"type": "kiana-export", "version": 1, "mind": "mind-other"}),
        ]
    )
    response = api.post("/api/v1/import", content=body.encode())
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is False
    assert report["stored"] == 1
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (2, "malformed_block"),
        (3, "id_mismatch"),
        (5, "unknown_author"),
        (6, "invalid_block"),
        (7, "foreign_mind"),
    ]
    assert report["errors_total"] == 5
    assert api.all_ids() == [good["id"]]


def test_import_size_limit(settings: Settings) -> None:
    app = create_app(settings, max_import_bytes=10_000)
    with ApiClient(app, settings) as api:
        before = api.counts()
        line = json.dumps({"type": "block", "record": signed_block(settings).to_dict()})
        for content in ((line + "\n") * 40, achunks(10_001, size=1000)):
            response = api.post("/api/v1/import", content=content)
            assert (response.status_code, error_code(response)) == (413, "request_too_large")
        assert_unchanged(api, before)
        # Larger than a single block may be, but within the import limit: accepted.
        response = api.post("/api/v1/import", content=(line + "\n") * 2)
        assert response.json()["stored"] == 1


def test_empty_import(api: ApiClient) -> None:
    report = api.post("/api/v1/import", content=b"").json()
    assert (report["ok"], report["lines"], report["stored"]) == (True, 0, 0)


# -- serving -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "[::]", "", "192.168.1.5", "10.0.0.1", "example.com"]
)
def test_check_bind_refuses_open_hosts_without_token(host: str) -> None:
    with pytest.raises(ConfigError, match="require_token"):
        check_bind(host, require_token=False)
    check_bind(host, require_token=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_check_bind_allows_loopback_without_token(host: str) -> None:
    check_bind(host, require_token=False)


def test_serve_refuses_before_opening_anything(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path / "nothing-here",
        environ={"KIANA_API_HOST": "0.0.0.0", "KIANA_API_REQUIRE_TOKEN": "0"},
    )
    with pytest.raises(ConfigError):
        serve(settings)
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(HomeError, match="kiana init"):
        serve(load_settings(home=tmp_path / "nothing-here", environ={}))


def test_strip_query_filter() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/api/v1/search?q=my+secret", "1.1", 200),
        None,
    )
    assert StripQueryFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /api/v1/search HTTP/1.1" 200'


def test_real_server_on_a_loopback_socket(tmp_path: Path) -> None:
    settings = make_home(tmp_path, KIANA_LOG_LEVEL="info", KIANA_MAX_BODY_BYTES=str(MAX_BODY))
    server = make_server(settings, create_app(settings))
    access = logging.getLogger("uvicorn.access").handlers[0]
    assert isinstance(access, logging.StreamHandler)
    assert any(isinstance(f, StripQueryFilter) for f in access.filters)
    log = io.StringIO()
    old_stream = access.setStream(log)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        token = (settings.home / "api-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/readyz").status_code == 200
            assert client.get("/api/v1/status").status_code == 401
            created = client.post("/api/v1/blocks", json={"text": "over the wire"}, headers=auth)
            assert created.status_code == 201
            hits = client.get("/api/v1/search", params={"q": "wire"}, headers=auth)
            assert hits.json()["hits"][0]["block"]["body"] == "over the wire"
            big = client.post("/api/v1/blocks", content=chunks(LIMIT + 1), headers={**auth, **JSON})
            assert (big.status_code, error_code(big)) == (413, "request_too_large")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/api/v1/status", headers=auth).json()["blocks"]["total"] == 1
    finally:
        server.should_exit = True
        thread.join(10)
        access.setStream(old_stream)
        sock.close()
    assert not thread.is_alive()
    lines = log.getvalue()
    assert "GET /api/v1/search HTTP/1.1" in lines
    assert "wire" not in lines and "over the" not in lines
