"""Benchmark the web dashboard: bundle size, time to interactive, live-update latency.

Usage::

    .venv/bin/python benchmarks/bench_dashboard.py [--rounds 10] [--blocks 30]
        [--out benchmarks/results/dashboard.json]

Needs the system Chromium (``/usr/bin/chromium``; Playwright never downloads one).

- **bundle**: every ``.js`` and ``.css`` file of ``src/kiana/web/dist``, gzipped
  (level 9, what a gzip-serving proxy would send), in total and for the first
  page load (``index.html``'s entry script and stylesheet, plus the lazy chunks
  the memory page pulls in). Goal: ≤ 200 KB gzipped in total.
- **time to interactive**: headless Chromium on localhost, already logged in
  (the session cookie is set), opens ``/memory`` of a node holding ``--blocks``
  facts; the time is ``performance.now()`` (ms since navigation start) when the
  memory list has rendered its blocks. Cold = a fresh browser context each round
  (empty cache); warm = the same context (cached assets). Median of ``--rounds``.
  Baseline: a static HTML page with the same number of bytes as the entry
  files (text, no scripts) from Python's ``http.server`` on localhost, time to
  its ``load`` event: what the network and the browser cost before any code runs.
- **live latency**: node B, paired with A through the real pairing protocol and
  linked over loopback TCP, writes a fact (``POST /api/v1/blocks`` on B); the
  time until it is shown on A's open memory page (no reload: B's sync pushes the
  block at once, A's node announces it to the live events stream, the page waits
  100 ms for more and reloads its list). Median and 95th percentile of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import gzip
import http.server
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402
from tests.chat_helpers import running_server  # noqa: E402
from tests.helpers_cli import QUIET_MESH  # noqa: E402

from kiana.config import load_settings  # noqa: E402
from kiana.mesh.pairing_service import join_mind  # noqa: E402
from kiana.node import Node  # noqa: E402
from kiana.web import DIST  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
GOAL_BUNDLE_KB = 200


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def bundle() -> dict[str, Any]:
    files = sorted(p for p in DIST.rglob("*") if p.suffix in (".js", ".css"))
    sizes = {p.relative_to(DIST).as_posix(): (p.stat().st_size, gz(p.read_bytes())) for p in files}
    index = (DIST / "index.html").read_text()
    entry = [
        m.lstrip("/") for m in re.findall(r'(?:src|href)="(/assets/[^"]+\.(?:js|css))"', index)
    ]
    memory = [n for n in sizes if re.search(r"assets/(Memory|ErrorBox|ConfirmDialog)-", n)]
    first = sorted(set(entry) | set(memory))
    total_gz = sum(g for _, g in sizes.values())
    return {
        "files": {n: {"bytes": b, "gzip": g} for n, (b, g) in sizes.items()},
        "total_bytes": sum(b for b, _ in sizes.values()),
        "total_gzip": total_gz,
        "total_gzip_kb": round(total_gz / 1000, 1),
        "entry": entry,
        "memory_page_files": first,
        "memory_page_bytes": sum(sizes[n][0] for n in first),
        "memory_page_gzip": sum(sizes[n][1] for n in first),
        "goal_kb": GOAL_BUNDLE_KB,
        "met": total_gz <= GOAL_BUNDLE_KB * 1000,
    }


def home(path: Path, name: str, cache: str | None) -> Any:
    env = {**QUIET_MESH, "KIANA_MESH_HEARTBEAT_MS": "200"}
    if cache:
        env["KIANA_MODEL_CACHE"] = cache
    settings = load_settings(home=path, environ=env)
    if name:
        Node.init(settings, mind_name="Bench mind", device_name=name).close()
    return settings


def log_in(browser: Any, url: str, token: str) -> list[dict[str, Any]]:
    ctx = browser.new_context(base_url=url)
    page = ctx.new_page()
    page.goto("/login#token=" + token)
    page.wait_for_url("**/chat")
    cookies = ctx.cookies()
    ctx.close()
    return cookies


def open_memory(page: Any) -> float:
    page.goto("/memory", wait_until="commit")
    page.locator("[data-testid=block-item]").first.wait_for(state="visible", timeout=30_000)
    return float(page.evaluate("performance.now()"))


def tti(browser: Any, url: str, cookies: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    cold = []
    for _ in range(rounds):
        ctx = browser.new_context(base_url=url)
        ctx.add_cookies(cookies)
        cold.append(open_memory(ctx.new_page()))
        ctx.close()
    ctx = browser.new_context(base_url=url)
    ctx.add_cookies(cookies)
    page = ctx.new_page()
    open_memory(page)  # fills the cache
    warm = [open_memory(page) for _ in range(rounds)]
    ctx.close()
    return {
        "cold_ms": [round(v, 1) for v in cold],
        "warm_ms": [round(v, 1) for v in warm],
        "cold_median_ms": round(statistics.median(cold), 1),
        "warm_median_ms": round(statistics.median(warm), 1),
    }


def static_baseline(browser: Any, size: int, rounds: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    filler = ("<p>" + "lorem ipsum dolor sit amet " * 30 + "</p>\n") * (size // 820 + 1)
    (folder / "index.html").write_text(f"<!doctype html><title>static</title>{filler}"[:size])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    times = []
    try:
        for _ in range(rounds):
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(url, wait_until="load")
            times.append(
                page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            )
            ctx.close()
    finally:
        server.shutdown()
    return {"bytes": size, "load_ms": [round(v, 1) for v in times],
            "median_ms": round(statistics.median(times), 1)}  # fmt: skip


def live_latency(browser: Any, tmp: Path, url_a: str, token_a: str, client_a: Any,
                 cache: str | None, rounds: int) -> dict[str, Any]:  # fmt: skip
    invite = client_a.post("/api/v1/mesh/pairing", json={}).json()
    settings_b = home(tmp / "b", "", cache)
    address = f"127.0.0.1:{invite['port']}"
    with ThreadPoolExecutor(1) as pool:  # away from Playwright's event loop
        joined = pool.submit(
            lambda: asyncio.run(join_mind(settings_b, invite["code"], address=address, name="b"))
        ).result()
    with running_server(settings_b) as node_b, node_b.client() as client_b:
        client_b.post("/api/v1/mesh/peers", json={"address": f"127.0.0.1:{invite['port']}"})
        deadline = time.monotonic() + 30
        while not any(
            p["device"] == joined["device"] and p["state"] == "up"
            for p in client_a.get("/api/v1/mesh/peers").json()["peers"]
        ):
            assert time.monotonic() < deadline, "A and B did not link"
            time.sleep(0.1)
        ctx = browser.new_context(base_url=url_a)
        page = ctx.new_page()
        page.goto("/login#token=" + token_a)
        page.wait_for_url("**/chat")
        page.goto("/memory")
        page.locator("[data-testid=block-item]").first.wait_for()
        expect(page.get_by_test_id("live-indicator")).to_have_text("● live")
        time.sleep(1.5)
        times = []
        for i in range(rounds):
            fact = f"Fact {i} from the phone, written at {time.time():.3f}."
            started = time.monotonic()
            client_b.post("/api/v1/blocks", json={"text": fact}).raise_for_status()
            page.locator("[data-testid=block-item]", has_text=fact).wait_for(timeout=30_000)
            times.append(time.monotonic() - started)
            time.sleep(0.3)
        ctx.close()
    return {"s": [round(v, 3) for v in times], "median_s": round(statistics.median(times), 3),
            "p95_s": round(p95(times), 3), "max_s": round(max(times), 3)}  # fmt: skip


def p95(values: list[float]) -> float:
    """The 95th percentile (inclusive method: within the measured range)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dashboard.json")
    args = parser.parse_args()
    cache = os.environ.get("KIANA_TEST_MODEL_CACHE")

    out: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": os.getloadavg()[0],
        },
        "bundle": bundle(),
    }
    print(f"bundle: {out['bundle']['total_gzip_kb']} KB gzipped (goal ≤ {GOAL_BUNDLE_KB} KB)")
    with tempfile.TemporaryDirectory() as raw, sync_playwright() as p:
        tmp = Path(raw)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        out["machine"]["chromium"] = browser.version
        settings_a = home(tmp / "a", "laptop", cache)
        with running_server(settings_a) as node_a, node_a.client() as client_a:
            for i in range(args.blocks):
                text = f"Household fact number {i}: the spare fuse is in drawer {i % 7}."
                client_a.post("/api/v1/blocks", json={"text": text}).raise_for_status()
            cookies = log_in(browser, node_a.url, node_a.token)
            out["tti"] = tti(browser, node_a.url, cookies, args.rounds)
            print(f"time to interactive: {out['tti']}")
            out["static_baseline"] = static_baseline(
                browser, out["bundle"]["memory_page_bytes"], args.rounds
            )
            print(f"static baseline: {out['static_baseline']}")
            out["live"] = live_latency(
                browser, tmp, node_a.url, node_a.token, client_a, cache, args.rounds
            )
            print(f"live latency: {out['live']}")
        browser.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
