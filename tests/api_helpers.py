"""Helpers for the HTTP API tests: a synchronous client over the real ASGI app.

``ApiClient`` runs the app's lifespan and an ``httpx.AsyncClient`` with
``ASGITransport`` inside an anyio blocking portal, so tests stay plain
functions (and work with hypothesis) while the app runs exactly as under a
server: lifespan, middleware, exception handlers and offloader threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.from_thread
import httpx
from fastapi import FastAPI
from tests.helpers_cli import QUIET_MESH

from kiana.blocks import Block, make_block
from kiana.config import Settings, load_settings
from kiana.home import load_identity, read_token
from kiana.identity import DeviceKeys
from kiana.node import Node, now_ms

BASE = "http://kiana.test"
FULL_ID = "ab" * 32

# Every protected route with a concrete path and a plausible request.
PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/status", {}),
    ("GET", "/api/v1/devices", {}),
    ("POST", "/api/v1/blocks", {"json": {"text": "secret stuff"}}),
    ("POST", "/api/v1/blocks/signed", {"json": {"v": 1}}),
    ("GET", "/api/v1/blocks", {}),
    ("GET", f"/api/v1/blocks/{FULL_ID}", {}),
    ("GET", f"/api/v1/blocks/{FULL_ID}/verify", {}),
    ("DELETE", f"/api/v1/blocks/{FULL_ID}", {}),
    ("GET", "/api/v1/search?q=secret", {}),
    ("GET", "/api/v1/export", {}),
    (
        "POST",
        "/api/v1/import",
        {"content": b"", "headers": {"content-type": "application/x-ndjson"}},
    ),
    ("POST", "/api/v1/chat", {"json": {"message": "secret stuff"}}),
    ("GET", "/api/v1/conversations", {}),
    ("GET", "/api/v1/conversations/c-0123456789abcdef", {}),
    ("DELETE", "/api/v1/conversations/c-0123456789abcdef", {}),
    ("GET", "/api/v1/models", {}),
    ("POST", "/api/v1/reindex", {}),
    ("POST", "/api/v1/devices/aaaa-bbbb-cccc-dddd/revoke", {}),
    ("GET", "/api/v1/mesh/peers", {}),
    ("POST", "/api/v1/mesh/peers", {"json": {"address": "10.0.0.1:7475"}}),
    ("POST", "/api/v1/mesh/pairing", {"json": {}}),
    ("GET", "/api/v1/mesh/pairing/7", {}),
    (
        "POST",
        "/api/v1/mesh/messages",
        {"json": {"to": "aaaa-bbbb-cccc-dddd", "channel": "app.x", "text": "secret"}},
    ),
    ("GET", "/api/v1/mesh/inbox", {}),
    ("POST", "/api/v1/mesh/ping/aaaa-bbbb-cccc-dddd", {}),
    ("GET", "/api/v1/sync/status", {}),
    ("GET", "/api/v1/ledger", {}),
    ("GET", "/api/v1/ledger/verify", {}),
    ("GET", "/api/v1/ledger/head", {}),
    ("POST", "/api/v1/files?name=a.md", {"content": b"secret"}),
    ("GET", "/api/v1/events", {}),
    ("POST", "/api/v1/auth/link", {}),
    ("GET", "/api/v1/pins", {}),
    ("PUT", f"/api/v1/pins/{FULL_ID}", {}),
    ("DELETE", f"/api/v1/pins/{FULL_ID}", {}),
]
PROTECTED_TEMPLATES = {
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/devices"),
    ("POST", "/api/v1/blocks"),
    ("POST", "/api/v1/blocks/signed"),
    ("GET", "/api/v1/blocks"),
    ("GET", "/api/v1/blocks/{block_id}"),
    ("GET", "/api/v1/blocks/{block_id}/verify"),
    ("DELETE", "/api/v1/blocks/{block_id}"),
    ("GET", "/api/v1/search"),
    ("GET", "/api/v1/export"),
    ("POST", "/api/v1/import"),
    ("POST", "/api/v1/chat"),
    ("GET", "/api/v1/conversations"),
    ("GET", "/api/v1/conversations/{conversation_id}"),
    ("DELETE", "/api/v1/conversations/{conversation_id}"),
    ("POST", "/api/v1/devices/{device_id}/revoke"),
    ("GET", "/api/v1/mesh/peers"),
    ("POST", "/api/v1/mesh/peers"),
    ("POST", "/api/v1/mesh/pairing"),
    ("GET", "/api/v1/mesh/pairing/{nameplate}"),
    ("POST", "/api/v1/mesh/messages"),
    ("GET", "/api/v1/mesh/inbox"),
    ("POST", "/api/v1/mesh/ping/{device_id}"),
    ("GET", "/api/v1/sync/status"),
    ("GET", "/api/v1/ledger"),
    ("GET", "/api/v1/ledger/verify"),
    ("GET", "/api/v1/ledger/head"),
    ("POST", "/api/v1/files"),
    ("GET", "/api/v1/events"),
    ("POST", "/api/v1/auth/link"),
    ("GET", "/api/v1/pins"),
    ("PUT", "/api/v1/pins/{block_id}"),
    ("DELETE", "/api/v1/pins/{block_id}"),
    ("GET", "/api/v1/models"),
    ("POST", "/api/v1/reindex"),
}


def make_home(tmp_path: Path, **env: str) -> Settings:
    settings = load_settings(home=tmp_path / "home", environ={**QUIET_MESH, **env})
    Node.init(settings, mind_name="Test mind", device_name="test-device").close()
    return settings


def signed_block(settings: Settings, body: str = "a signed fact", **kwargs: Any) -> Block:
    keys, _ = load_identity(settings)
    return sign_as(keys, keys.device_id, body=body, **kwargs)


def sign_as(keys: DeviceKeys, author: str, *, body: str, **kwargs: Any) -> Block:
    kwargs.setdefault("kind", "fact")
    kwargs.setdefault("max_body", 10 * 1024 * 1024)
    return make_block(keys.signing, author, body=body, created=now_ms(), **kwargs)


class ApiClient:
    def __init__(
        self, app: FastAPI, settings: Settings, *, raise_app_exceptions: bool = True
    ) -> None:
        self.app = app
        self.settings = settings
        self.token = read_token(settings)
        self._raise = raise_app_exceptions
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ApiClient:
        portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        self.portal = portal
        self._stack.enter_context(
            portal.wrap_async_context_manager(self.app.router.lifespan_context(self.app))
        )
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=self._raise)
        self.client = httpx.AsyncClient(transport=transport, base_url=BASE)
        self._stack.callback(portal.call, self.client.aclose)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def request(
        self, method: str, url: str, *, token: str | None = "valid", **kwargs: Any
    ) -> httpx.Response:
        """``token``: "valid" (default), None (no header) or a literal token to send."""
        headers = dict(kwargs.pop("headers", {}))
        if token == "valid":
            headers["Authorization"] = f"Bearer {self.token}"
        elif token is not None:
            headers["Authorization"] = token
        return self.portal.call(lambda: self.client.request(method, url, headers=headers, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def counts(self) -> dict[str, Any]:
        response = self.get("/api/v1/status")
        assert response.status_code == 200, response.text
        blocks: dict[str, Any] = response.json()["blocks"]
        return blocks

    def all_ids(self) -> list[str]:
        response = self.get("/api/v1/blocks", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    code: str = body["error"]["code"]
    return code


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        yield b"x" * part
        sent += part


async def achunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for part in chunks(total, size):
        yield part
