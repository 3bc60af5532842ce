"""The dashboard's backend: cookie login with CSRF, live events, file upload, static files."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.api_helpers import ApiClient, error_code, make_home

from kiana.api import live
from kiana.api.app import create_app
from kiana.api.sessions import MAX_LINKS, SPENT_MEMORY_S, LinkCheck, Sessions
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


def new_link(api: ApiClient) -> str:
    response = api.post("/api/v1/auth/link")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == "/login#once=" + body["once"]
    assert len(base64.urlsafe_b64decode(body["once"] + "==")) >= 16  # at least 128 bits
    once: str = body["once"]
    return once


def test_a_one_time_link_logs_in_once(api: ApiClient) -> None:
    assert api.post("/api/v1/auth/link", token=None).status_code == 401
    once = new_link(api)
    assert new_link(api) != once
    assert api.post("/api/v1/auth/link").json()["expires_in_s"] == 60
    first = api.post("/auth/login", json={"once": once}, token=None)
    assert first.status_code == 200, first.text
    cookies = first.headers.get("set-cookie", "").lower()
    assert "kiana_session=" in cookies and "httponly" in cookies and "samesite=strict" in cookies
    assert api.client.cookies.get("kiana_csrf") == first.json()["csrf"]
    assert api.get("/api/v1/status", token=None).status_code == 200  # the cookie works
    api.client.cookies.clear()
    again = api.post("/auth/login", json={"once": once}, token=None)
    assert again.status_code == 401 and error_code(again) == "link_used"
    assert "kiana open" in again.json()["error"]["message"]
    assert api.get("/api/v1/status", token=None).status_code == 401
    assert "set-cookie" not in again.headers
    wrong = api.post("/auth/login", json={"once": "A" * 43}, token=None)
    assert wrong.status_code == 401 and error_code(wrong) == "link_invalid"
    # The token is not a nonce (nor the other way round), and exactly one must be sent.
    other = new_link(api)
    assert api.post("/auth/login", json={"token": other}, token=None).status_code == 401
    for body in ({}, {"token": api.token, "once": other}, {"once": "not a nonce!"}):
        bad = api.post("/auth/login", json=body, token=None)
        assert bad.status_code == 422 and error_code(bad) == "invalid_request", body
    assert api.post("/auth/login", json={"once": other}, token=None).status_code == 200


def test_a_one_time_link_expires(api: ApiClient) -> None:
    sessions = api.app.state.runtime.sessions
    sessions.link_ttl_s = 0.3
    late = new_link(api)
    in_time = new_link(api)
    assert api.post("/auth/login", json={"once": in_time}, token=None).status_code == 200
    time.sleep(0.5)
    expired = api.post("/auth/login", json={"once": late}, token=None)
    assert expired.status_code == 401 and error_code(expired) == "link_expired"
    used = api.post("/auth/login", json={"once": in_time}, token=None)
    assert used.status_code == 401 and error_code(used) == "link_used"


def test_link_lifetimes_on_the_clock() -> None:
    sessions = Sessions()
    a = sessions.new_link(now=0.0)
    b = sessions.new_link(now=0.0)
    assert sessions.use_link(a, now=59.9) is LinkCheck.OK
    assert sessions.use_link(a, now=59.95) is LinkCheck.USED
    assert sessions.use_link(b, now=60.0) is LinkCheck.EXPIRED
    assert sessions.use_link(b, now=61.0) is LinkCheck.EXPIRED
    assert sessions.use_link("never-made", now=61.0) is LinkCheck.UNKNOWN
    # Spent links are told apart for a while, then forgotten.
    assert sessions.use_link(a, now=60.0 + SPENT_MEMORY_S) is LinkCheck.UNKNOWN
    # At most MAX_LINKS open links: a new one retires the oldest.
    first = sessions.new_link(now=100.0)
    for i in range(MAX_LINKS):
        sessions.new_link(now=100.0 + i / 1000)
    assert len(sessions.links) == MAX_LINKS
    assert sessions.use_link(first, now=101.0) is LinkCheck.EXPIRED


def test_wrong_links_count_as_failed_logins(api: ApiClient) -> None:
    once = new_link(api)
    for _ in range(5):
        wrong = api.post("/auth/login", json={"once": "B" * 43}, token=None)
        assert wrong.status_code == 401
        assert api.post("/auth/login", json={"token": "x"}, token=None).status_code == 401
    limited = api.post("/auth/login", json={"once": once}, token=None)
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"
    limited = api.post("/auth/login", json={"token": api.token}, token=None)
    assert limited.status_code == 429
    api.app.state.runtime.sessions.failures.clear()  # a minute later
    # A refused attempt did not spend the link.
    assert api.post("/auth/login", json={"once": once}, token=None).status_code == 200


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


def test_events_are_pushed_not_polled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the poll slowed to 30 s, a new block still arrives at once: it was pushed."""
    from tests.chat_helpers import running_server, sse_events

    monkeypatch.setattr(live, "FALLBACK_S", 30.0)
    settings = make_home(tmp_path / "push", KIANA_EMBEDDING_MODEL="off")
    with running_server(settings) as server, server.client(timeout=10) as client:
        seen: list[tuple[float, dict[str, Any]]] = []
        started = 0.0
        with client.stream("GET", "/api/v1/events") as response:
            for event, data in sse_events(response.iter_lines()):
                if event != "blocks":
                    continue
                seen.append((time.monotonic(), data))
                if len(seen) == 3:
                    break
                started = time.monotonic()
                client.post("/api/v1/blocks", json={"text": f"fact {len(seen)}"})
        assert [d["total"] for _, d in seen] == [0, 1, 2]
        assert seen[2][0] - started < 5.0  # far below the 30 s poll


def test_events_see_writes_by_another_process(tmp_path: Path) -> None:
    """``kiana remember`` in a shell announces nothing to the server: the slow poll finds it."""
    from tests.chat_helpers import running_server, sse_events
    from tests.helpers_cli import run_kiana

    settings = make_home(tmp_path / "other", KIANA_EMBEDDING_MODEL="off")
    with running_server(settings) as server, server.client(timeout=30) as client:
        totals: list[int] = []
        with client.stream("GET", "/api/v1/events") as response:
            for event, data in sse_events(response.iter_lines()):
                if event != "blocks":
                    continue
                totals.append(data["total"])
                if len(totals) == 1:
                    done = run_kiana(
                        settings.home, "remember", "Written in a shell",
                        env={"KIANA_EMBEDDING_MODEL": "off"},
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr
                else:
                    break
        assert totals == [0, 1]


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
