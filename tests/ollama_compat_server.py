"""A stand-in for an Ollama server, for the tests: Ollama's HTTP API on real llama.cpp inference.

Ollama cannot be installed on the machines these tests run on (no downloads at
run time), so this small Starlette app implements the part of Ollama's
documented API (https://github.com/ollama/ollama/blob/main/docs/api.md) that
``kiana.llm.ollama`` uses, answering with a real model (SmolLM2-135M through
llama-cpp-python), not canned text:

- ``POST /api/chat``: ``model``, ``messages``, ``stream`` (default true),
  ``options`` (``num_predict``, ``temperature``, ``top_p``, ``seed``, ``stop``),
  ``keep_alive``. Streams NDJSON objects ``{model, created_at, message: {role,
  content}, done: false}`` and a last one with ``done: true``, ``done_reason``,
  ``total_duration``, ``load_duration``, ``prompt_eval_count``,
  ``prompt_eval_duration``, ``eval_count``, ``eval_duration`` (ns).
- ``GET /api/tags``: ``{"models": [{name, model, modified_at, size, digest, details}]}``.
- ``POST /api/embed``: ``input`` string or list → ``{model, embeddings, ...}``.
- An unknown model answers 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``
  as Ollama does.

It runs with uvicorn in a thread on a free loopback port (``start()`` returns
the base URL). Requests record their parsed JSON bodies in ``requests`` so tests
can check what the client sent.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import llama_cpp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OllamaCompatServer:
    def __init__(self, model_path: Path, name: str = "smollm2:135m", threads: int = 2) -> None:
        self.model_path = model_path
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""  # set by start()
        self._llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=2048, n_threads=threads, verbose=False
        )
        self._embedder: llama_cpp.Llama | None = None
        self._threads = threads
        self._lock = threading.Lock()
        self._digest = hashlib.sha256(str(model_path).encode()).hexdigest()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/", self.root, methods=["GET"]),
                Route("/api/chat", self.chat, methods=["POST"]),
                Route("/api/tags", self.tags, methods=["GET"]),
                Route("/api/embed", self.embed, methods=["POST"]),
            ]
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", ws="none", http="h11"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Ollama-compatible test server did not start")
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._llm.close()
        if self._embedder is not None:
            self._embedder.close()

    # -- routes ----------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return Response("Ollama is running", media_type="text/plain")

    def _unknown(self, model: object) -> JSONResponse | None:
        if model == self.name:
            return None
        return JSONResponse(
            {"error": f'model "{model}" not found, try pulling it first'}, status_code=404
        )

    async def tags(self, request: Request) -> Response:
        return JSONResponse(
            {
                "models": [
                    {
                        "name": self.name,
                        "model": self.name,
                        "modified_at": _now(),
                        "size": self.model_path.stat().st_size,
                        "digest": self._digest,
                        "details": {
                            "parent_model": "",
                            "format": "gguf",
                            "family": "llama",
                            "families": ["llama"],
                            "parameter_size": "135M",
                            "quantization_level": "Q4_1",
                        },
                    }
                ]
            }
        )

    async def chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid JSON body"}, status_code=400)
        self.requests.append(body)
        missing = self._unknown(body.get("model"))
        if missing is not None:
            return missing
        options = body.get("options") or {}
        kwargs: dict[str, Any] = {
            "messages": body.get("messages") or [],
            "max_tokens": options.get("num_predict", 128),
            "temperature": options.get("temperature", 0.8),
            "top_p": options.get("top_p", 0.9),
            "seed": options.get("seed"),
            "stop": options.get("stop") or [],
        }
        if body.get("stream", True):
            return StreamingResponse(self._stream(kwargs), media_type="application/x-ndjson")
        pieces, final = [], {}
        for obj in self._generate(kwargs):
            pieces.append(obj["message"]["content"])
            final = obj
        final["message"] = {"role": "assistant", "content": "".join(pieces)}
        return JSONResponse(final)

    async def _stream(self, kwargs: dict[str, Any]) -> AsyncIterator[bytes]:
        # Like Ollama, stop generating when the client goes away: Starlette cancels
        # this generator on disconnect, and closing ``objects`` ends the inference.
        objects = self._generate(kwargs)
        try:
            while (obj := await anyio.to_thread.run_sync(next, objects, None)) is not None:
                yield (json.dumps(obj) + "\n").encode()
        finally:
            objects.close()

    def _generate(self, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        started = time.monotonic_ns()
        with self._lock:
            first: int | None = None
            count = 0
            reason = "stop"
            chunks = self._llm.create_chat_completion(stream=True, **kwargs)
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    first = first or time.monotonic_ns()
                    count += 1
                    yield {
                        "model": self.name,
                        "created_at": _now(),
                        "message": {"role": "assistant", "content": text},
                        "done": False,
                    }
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            ended = time.monotonic_ns()
            prompt_tokens = int(self._llm.n_tokens) - max(count - 1, 0)
        first = first or ended
        yield {
            "model": self.name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
            "total_duration": ended - started,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": first - started,
            "eval_count": count,
            "eval_duration": ended - first,
        }

    async def embed(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        missing = self._unknown(body.get("model"))
        if missing is not None:
            return missing
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        started = time.monotonic_ns()
        with self._lock:
            if self._embedder is None:
                self._embedder = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=512,
                    n_threads=self._threads,
                    verbose=False,
                )
            vectors = self._embedder.embed(texts, normalize=True) if texts else []
        return JSONResponse(
            {
                "model": self.name,
                "embeddings": vectors,
                "total_duration": time.monotonic_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": sum(len(t.split()) for t in texts),
            }
        )
