"""Helpers for the assistant API tests: real models, a shared model cache, a real server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.helpers_cli import QUIET_MESH

from kiana.api import create_app
from kiana.api.serve import make_server
from kiana.config import Settings, load_settings
from kiana.llm.registry import get_spec, package_dir
from kiana.node import Node

SMOLLM = "smollm2-135m-instruct"


def model_cache(factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session (the ONNX export and the GGUF check run once).

    ``KIANA_TEST_MODEL_CACHE`` points it somewhere that outlives the session.
    """
    raw = os.environ.get("KIANA_TEST_MODEL_CACHE")
    path = Path(raw).expanduser() if raw else factory.getbasetemp() / "kiana-model-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_models() -> None:
    """Skip unless the SmolLM2 test model and the embedding stack are installed."""
    spec = get_spec(SMOLLM)
    if package_dir(spec.parts[0].module) is None:
        pytest.skip(f"test model not installed: {spec.pip_command}")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("llama_cpp")


# One llama.cpp thread: on a busy two-core machine two threads spin-wait on each other
# (a 12-token answer measured 0.2-0.8 s on one thread, 5-45 s on two while another
# process kept one core busy). One thread also leaves a core for the event loop, so
# the latency test measures blocking, not CPU starvation.
CHAT_THREADS = "1"


def chat_home(home: Path, cache: Path, **env: str) -> Settings:
    """A fresh mind using SmolLM2 on one thread."""
    environ = {
        "KIANA_MODEL_CACHE": str(cache),
        "KIANA_CHAT_MODEL": SMOLLM,
        "KIANA_CHAT_THREADS": CHAT_THREADS,
        "KIANA_CHAT_CONTEXT": "2048",
        **QUIET_MESH,
        **env,
    }
    settings = load_settings(home=home, environ=environ)
    Node.init(settings, mind_name="Test mind", device_name="test-device").close()
    return settings


@dataclass
class Server:
    url: str
    token: str
    settings: Settings
    app: FastAPI

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.auth, timeout=timeout)


@contextlib.contextmanager
def running_server(settings: Settings) -> Iterator[Server]:
    """uvicorn serving ``create_app(settings)`` on a free loopback port, in a thread."""
    app = create_app(settings)
    server = make_server(settings, app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        token = (settings.home / "api-token").read_text().strip()
        yield Server(f"http://127.0.0.1:{port}", token, settings, app)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, parsed data) from the lines of a Server-Sent Events body."""
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))
            event = "message"


def parse_sse(text: str) -> list[tuple[str, Any]]:
    return list(sse_events(iter(text.splitlines())))
