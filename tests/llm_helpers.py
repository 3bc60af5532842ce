"""Helpers for the chat-model tests: the SmolLM2 fixture model, ports, silent servers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kiana.llm.registry import ModelPart, ModelSpec, get_spec, package_dir

SMOLLM = "smollm2-135m-instruct"
FAST = "qwen2.5-coder-0.5b-instruct"
DEFAULT = "qwen2.5-coder-1.5b-instruct"


def smollm_path() -> Path:
    """The SmolLM2 GGUF file inside its package; skips the test when it is not installed."""
    spec = get_spec(SMOLLM)
    folder = package_dir(spec.parts[0].module)
    if folder is None:
        pytest.skip(f"test model not installed: {spec.pip_command}")
    return folder / spec.parts[0].file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    return free_port()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # keep it open, read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


class Scripted(BaseHTTPRequestHandler):
    """Answers every request with the status and body the test set on the server."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._answer()

    def _answer(self) -> None:
        status, content_type, body = self.server.reply  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def scripted_server() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """An HTTP server answering ``server.reply = (status, content_type, body)``; yields it and its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def make_split_package(root: Path, source: Path, name: str, parts: int) -> ModelSpec:
    """Install a real package folder ``<name>_part<i>`` under ``root`` holding ``source``
    split in ``parts`` pieces, and return a registry spec for it (``root`` must be on
    ``sys.path`` for ``find_spec`` to locate it)."""
    data = source.read_bytes()
    step = -(-len(data) // parts)
    pieces = []
    for i in range(1, parts + 1):
        chunk = data[(i - 1) * step : i * step]
        folder = root / f"{name}_part{i}"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
        (folder / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        pieces.append(
            ModelPart(
                module=f"{name}_part{i}",
                requirement=f"{name.replace('_', '-')}-part{i}==1.0",
                file=f"data/part{i:02d}.bin",
                size=len(chunk),
                sha256=hashlib.sha256(chunk).hexdigest(),
            )
        )
    return ModelSpec(
        name=f"{name.replace('_', '-')}-model",
        title="test model split into parts",
        parts=tuple(pieces),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        license="Apache-2.0",
        chat_template="from the GGUF",
        context_length=8192,
    )


def spec_to_json(spec: ModelSpec) -> str:
    return json.dumps(
        {
            "name": spec.name,
            "title": spec.title,
            "size": spec.size,
            "sha256": spec.sha256,
            "parts": [[p.module, p.requirement, p.file, p.size, p.sha256] for p in spec.parts],
        }
    )


def spec_from_json(text: str) -> ModelSpec:
    data = json.loads(text)
    return ModelSpec(
        name=data["name"],
        title=data["title"],
        parts=tuple(ModelPart(*p) for p in data["parts"]),
        size=data["size"],
        sha256=data["sha256"],
        license="Apache-2.0",
        chat_template="from the GGUF",
        context_length=8192,
    )
