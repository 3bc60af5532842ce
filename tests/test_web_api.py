"""The dashboard's backend: cookie login with CSRF, live events, file upload, static files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tests.api_helpers import ApiClient, error_code, make_home

from kiana.api.app import create_app
from kiana.web import DIST


@pytest.fixture
def api(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_home(tmp_path)
    with ApiClient(create_app(settings), settings) as client:
        yield client


def login(api: ApiClient) -> str:
    response = api.post("/auth/login", json={"token": api.token}, token=None)
    assert response.status_code == 200, response.text
    assert "httponly" in response.headers.get("set-cookie", "").lower()
    assert "samesite=strict" in response.headers.get("set-cookie", "").lower()
    csrf: str = response.json()["csrf"]
    assert api.client.cookies.get("kiana_csrf") == csrf
    return csrf


def test_login_session_csrf_and_logout(api: ApiClient) -> None:
    assert api.get("/auth/me", token=None).json() == {"authenticated": False}
    wrong = api.post("/auth/login", json={"token": "nope"}, token=None)
    assert wrong.status_code == 401 and error_code(wrong) == "unauthorized"
    assert api.get("/api/v1/status", token=None).status_code == 401
    csrf = login(api)
    assert api.get("/auth/me", token=None).json() == {"authenticated": True}
    assert api.get("/api/v1/status", token=None).status_code == 200
    # A state change with the cookie alone (what a forged cross-site form would send) fails.
    forged = api.post("/api/v1/blocks", json={"text": "x"}, token=None)
    assert forged.status_code == 403 and error_code(forged) == "csrf_failed"
    assert api.counts()["total"] == 0
    bad = api.post(
        "/api/v1/blocks", json={"text": "x"}, token=None, headers={"X-CSRF-Token": "guess"}
    )
    assert bad.status_code == 403
    ok = api.post(
        "/api/v1/blocks", json={"text": "from the browser"}, token=None,
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert ok.status_code == 201, ok.text
    assert api.post("/auth/logout", token=None).status_code == 204
    assert api.get("/api/v1/status", token=None).status_code == 401  # the session is gone


def test_failed_logins_are_rate_limited(api: ApiClient) -> None:
    for _ in range(10):
        assert api.post("/auth/login", json={"token": "x"}, token=None).status_code == 401
    limited = api.post("/auth/login", json={"token": api.token}, token=None)
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"


def test_upload_a_markdown_file(api: ApiClient) -> None:
    text = "# Boiler\n\nThe boiler service is on 3 June.\n\n## Plumber\n\nCall Sam.\n"
    added = api.post("/api/v1/files", params={"name": "house.md"}, content=text.encode())
    assert added.status_code == 200, added.text
    assert added.json()["chunks"] >= 1 and added.json()["errors"] == []
    again = api.post("/api/v1/files", params={"name": "house.md"}, content=text.encode())
    assert again.json()["chunks"] == 0 and again.json()["skipped"] >= 1
    hits = api.get("/api/v1/search", params={"q": "boiler"}).json()
    assert hits
    for name, body in (("evil.exe", b"x"), ("../x.md", b"x"), ("bin.md", b"\xff\xfe\x00")):
        bad = api.post("/api/v1/files", params={"name": name}, content=body)
        assert bad.status_code == 400 and error_code(bad) == "invalid_input", name
    huge = api.post("/api/v1/files", params={"name": "big.md"}, content=b"a" * (17 << 20))
    assert huge.status_code in (400, 413)


def test_uploads_up_to_16_mib_pass_the_body_limit(tmp_path: Path) -> None:
    """The API's general body limit (~1 MiB) does not apply to file uploads."""
    settings = make_home(tmp_path, KIANA_EMBEDDING_MODEL="off")  # chunking only: fast
    with ApiClient(create_app(settings), settings) as api:
        body = "".join(f"Line {i}: the attic holds box number {i}.\n" for i in range(40_000))
        assert 2 << 20 > len(body) > 1 << 20
        added = api.post("/api/v1/files", params={"name": "attic.txt"}, content=body.encode())
        assert added.status_code == 200, added.text
        assert added.json()["chunks"] > 100 and added.json()["errors"] == []


def test_events_stream_reports_new_blocks(tmp_path: Path) -> None:
    """Over a real server (the in-process transport buffers whole bodies)."""
    from tests.chat_helpers import running_server, sse_events

    settings = make_home(tmp_path / "events")
    with running_server(settings) as server, server.client(timeout=30) as client:
        client.post("/api/v1/blocks", json={"text": "first"}).raise_for_status()
        seen: list[dict[str, Any]] = []
        with client.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for event, data in sse_events(response.iter_lines()):
                if event != "blocks":
                    continue
                seen.append(data)
                if len(seen) == 1:  # a fact written meanwhile arrives as the next event
                    client.post("/api/v1/blocks", json={"text": "second"}).raise_for_status()
                else:
                    break
        assert [d["total"] for d in seen] == [1, 2]
        assert seen[1]["latest"][0] != seen[0]["latest"][0]


def sources_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "node_modules" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def test_the_dashboard_is_served_and_matches_its_sources(api: ApiClient) -> None:
    root = Path(__file__).resolve().parents[1]
    if not (root / "web").exists():
        pytest.skip("the dashboard sources are not in this checkout yet")
    info = json.loads((DIST / "build-info.json").read_text())
    assert info["sources_sha256"] == sources_hash(root / "web"), (
        "src/kiana/web/dist was not built from the current web/ sources: run scripts/build-web"
    )
    index = api.get("/", token=None)
    assert index.status_code == 200 and "<div id=" in index.text
    route = api.get("/devices", token=None)  # a client-side route
    assert route.status_code == 200 and route.text == index.text
    assert api.get("/api/v1/nope", token=None).status_code == 401
    assert api.get("/docs", token=None).status_code == 200
