"""``kiana open`` and the login link ``kiana serve`` prints, against a real ``kiana serve``."""

from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.helpers_cli import clean_env, kiana_argv, run_kiana

pytestmark = pytest.mark.timeout(120)

LINK = re.compile(r"(http://127\.0\.0\.1:\d+)/login#once=([A-Za-z0-9_-]{43,})")
FAST = {"KIANA_EMBEDDING_MODEL": "off"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    result = run_kiana(home, "init", "--name", "Family", "--device-name", "laptop", env=FAST)
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def serving(home: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``kiana serve`` in a child process; its standard error, line by line, in a queue."""
    proc = subprocess.Popen(
        kiana_argv(home, "serve"),
        env=clean_env({**FAST, "KIANA_API_PORT": str(port)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_line(lines: queue.Queue[str], pattern: re.Pattern[str], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if pattern.search(line):
            return line
    raise AssertionError("not printed:\n" + "".join(seen))


def log_in(base: str, once: str) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=10) as client:
        response = client.post("/auth/login", json={"once": once})
        if response.status_code == 200:  # the cookie opens the API
            assert client.get("/api/v1/status").status_code == 200
        return response


def test_serve_prints_a_one_time_link_and_open_makes_new_ones(
    home: Path, port: int, serving: tuple[subprocess.Popen[str], queue.Queue[str]], tmp_path: Path
) -> None:
    proc, lines = serving
    env = {**FAST, "KIANA_API_PORT": str(port)}
    printed = LINK.search(wait_line(lines, LINK))
    assert printed is not None
    base, once = printed.groups()
    token = (home / "api-token").read_text().strip()
    assert token not in once
    assert log_in(base, once).status_code == 200
    used = log_in(base, once)
    assert used.status_code == 401 and used.json()["error"]["code"] == "link_used"

    shown = run_kiana(home, "open", "--no-browser", env=env)
    assert shown.returncode == 0, shown.stderr
    url = shown.stdout.strip()
    match = LINK.fullmatch(url)
    assert match is not None and match.group(1) == base, url
    assert "once" in shown.stderr and "60 s" in shown.stderr

    # Without --no-browser: the browser named by $BROWSER gets the link.
    got = tmp_path / "browser-got"
    browser = tmp_path / "fake-browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{got}"\n')
    browser.chmod(0o755)
    opened = run_kiana(home, "open", "--json", env={**env, "BROWSER": str(browser)})
    assert opened.returncode == 0, opened.stderr
    info = json.loads(opened.stdout)
    assert info["browser"] is True and info["expires_in_s"] == 60
    assert got.read_text() == info["url"] != url
    # Each link works once, and the one the browser got is still good.
    assert log_in(base, match.group(2)).status_code == 200
    browser_once = LINK.fullmatch(info["url"])
    assert browser_once is not None
    assert log_in(base, browser_once.group(2)).status_code == 200
    assert log_in(base, browser_once.group(2)).status_code == 401
    assert "Traceback" not in "".join(list(lines.queue))
    assert proc.poll() is None


def test_open_needs_a_running_node(home: Path, tmp_path: Path) -> None:
    down = run_kiana(home, "open", env={**FAST, "KIANA_API_PORT": str(free_port())})
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr.strip() == "error: kiana serve is not running for this home; start it first"
    fresh = run_kiana(tmp_path / "nowhere", "open")
    assert fresh.returncode == 2 and "run 'kiana init' first" in fresh.stderr
