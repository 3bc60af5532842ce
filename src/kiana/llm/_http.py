"""What the Ollama and OpenAI-compatible clients share: timeouts, error mapping, cancel.

Every request has a connect timeout and a read timeout (the longest wait for
the next bytes: a slow model may take that long to evaluate a prompt).
httpx and HTTP-status failures become ``kiana.errors`` with the server URL in
the message. ``abort_on_cancel`` makes cancellation prompt even while the
server is still evaluating the prompt: a watcher thread shuts the socket
down when ``cancel`` is set, which ends the blocked read at once and tells the
server (by the closed connection) to stop generating.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from kiana.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    KianaError,
    LLMError,
    ModelUnavailableError,
)
from kiana.llm.base import (
    DEFAULT_OPTIONS,
    ChatMessage,
    ChatStream,
    GenerationOptions,
    ModelInfo,
)

CONNECT_TIMEOUT = 10.0


def make_client(
    base_url: str, timeout: float, headers: dict[str, str] | None = None
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        # A connection per request: cancelling shuts its socket down (abort_on_cancel).
        limits=httpx.Limits(max_keepalive_connections=0),
        # Loopback servers and explicit URLs only: never pick up proxies from the environment.
        trust_env=False,
    )


def translate(exc: httpx.HTTPError, what: str, url: str, timeout: float) -> LLMError:
    """An httpx failure as a KI_ana error naming the server."""
    if isinstance(exc, httpx.ConnectTimeout):
        return BackendUnavailableError(
            f"{what} at {url} did not accept a connection within {min(CONNECT_TIMEOUT, timeout):.0f} s"
        )
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeoutError(f"{what} at {url} did not answer within {timeout:.0f} s")
    if isinstance(exc, httpx.ConnectError):
        reason = _reason(exc)
        return BackendUnavailableError(
            f"cannot connect to {what} at {url}: {reason}; is it running?"
        )
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return LLMError(f"{what} at {url} closed the connection unexpectedly: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return BackendUnavailableError(f"invalid {what} URL {url!r}: {exc}")
    return LLMError(f"{what} at {url} failed: {exc}")


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text or type(exc).__name__


def error_message(response: httpx.Response) -> str:
    """The server's own error text: Ollama's {"error": "..."} or OpenAI's {"error": {"message"}}."""
    try:
        body: Any = json.loads(response.read())
    except (ValueError, httpx.HTTPError):
        return response.reason_phrase or f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)
    if error:
        return str(error)
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail or body)[:500]


def status_error(response: httpx.Response, what: str, url: str, model: str) -> LLMError:
    """An HTTP error status as a KI_ana error."""
    status = response.status_code
    message = error_message(response)
    if status == 404 and model:
        return ModelUnavailableError(f"{what} at {url} has no model '{model}': {message}")
    if status in (401, 403):
        return LLMError(
            f"{what} at {url} refused the request (HTTP {status}: {message});"
            " check chat.api_key / KIANA_CHAT_API_KEY"
        )
    if status in (408, 504):
        return BackendTimeoutError(f"{what} at {url} timed out (HTTP {status}: {message})")
    if status in (502, 503):
        return BackendUnavailableError(f"{what} at {url} is unavailable (HTTP {status}: {message})")
    return LLMError(f"{what} at {url} answered HTTP {status}: {message}")


class _SocketGrabber:
    """httpcore trace hook that keeps the socket of the connection a request opens."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self.sock = sock


@contextlib.contextmanager
def abort_on_cancel(cancel: threading.Event | None) -> Iterator[dict[str, Any]]:
    """Request extensions under which setting ``cancel`` shuts the request's socket down.

    Pass the yielded dict as ``extensions=`` of a request made inside the block,
    on a client without keep-alive (``make_client``), so every request opens
    its own connection and the trace hook sees its socket, from the connect on:
    a cancel while the server is still silent (evaluating the prompt) works too.
    """
    grabber = _SocketGrabber()
    if cancel is None:
        yield {}
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if cancel.wait(0.05):
                break
        while not done.is_set():  # cancelled: shut the socket as soon as there is one
            if grabber.sock is not None:
                with contextlib.suppress(OSError):
                    grabber.sock.shutdown(socket.SHUT_RDWR)
                return
            done.wait(0.02)

    threading.Thread(target=watch, name="kiana-llm-cancel", daemon=True).start()
    try:
        yield {"trace": grabber}
    finally:
        done.set()


def json_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed as JSON if it is an object, else ``None``."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def sampling(options: GenerationOptions, max_tokens_key: str) -> dict[str, Any]:
    """The generation options under the names both APIs use (but for the token limit)."""
    out: dict[str, Any] = {
        max_tokens_key: options.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
    }
    if options.seed is not None:
        out["seed"] = options.seed
    if options.stop:
        out["stop"] = list(options.stop)
    return out


def cancelled(cancel: threading.Event | None, out: ChatStream) -> bool:
    """Whether ``cancel`` is set; if so the stream ends with ``finish_reason`` "cancelled"."""
    if cancel is not None and cancel.is_set():
        out.finish_reason = "cancelled"
        return True
    return False


def first_token(out: ChatStream, started: float) -> None:
    """Note the time to the first text piece (the first call only)."""
    if "first_token_s" not in out.usage.extra:
        out.usage.extra["first_token_s"] = time.monotonic() - started


def as_int(value: object) -> int:
    """A token counter from a server's JSON (0 when missing or not an integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class StreamingHttpModel:
    """What the Ollama and OpenAI-compatible clients share: one streaming POST per turn.

    A subclass sets ``backend``, ``_what`` (for messages) and ``_path`` (the chat
    route), and implements ``_payload``, ``_read`` and ``_missing``.
    """

    backend: str
    _what: str
    _path: str

    def __init__(
        self, model: str, base_url: str, timeout: float, headers: dict[str, str] | None = None
    ) -> None:
        self._model = model
        self.base_url = base_url.rstrip("/")
        self._timeout = float(timeout)
        self._client = make_client(self.base_url, self._timeout, headers)

    @property
    def name(self) -> str:
        return self._model

    def close(self) -> None:
        self._client.close()

    def list_models(self) -> list[ModelInfo]:
        raise NotImplementedError

    def _missing(self, names: str) -> str:
        """Why the configured model is unavailable, given the ``names`` the server has."""
        raise NotImplementedError

    def info(self) -> ModelInfo:
        """The configured model as the server lists it; never raises for a down server."""
        try:
            models = self.list_models()
        except KianaError as exc:
            return ModelInfo(self.backend, self._model, False, exc.message, selected=True)
        for m in models:
            if m.selected:
                return m
        names = ", ".join(m.name for m in models) or "none"
        return ModelInfo(self.backend, self._model, False, self._missing(names), selected=True)

    def _get_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One plain request; its JSON answer, or a KI_ana error naming the server."""
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise translate(exc, self._what, self.base_url, self._timeout) from exc
        if response.status_code >= 400:
            model = str((body or {}).get("model", ""))
            raise status_error(response, self._what, self.base_url, model)
        try:
            return response.json()
        except ValueError as exc:
            raise LLMError(
                f"{self._what} at {self.base_url}{path} did not answer with JSON"
            ) from exc

    def _chat_payload(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        """The fields both chat APIs share: model, messages, streaming on."""
        return {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
        }

    def _payload(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _read(
        self,
        response: httpx.Response,
        cancel: threading.Event | None,
        out: ChatStream,
        started: float,
    ) -> Iterator[str]:
        raise NotImplementedError

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenerationOptions = DEFAULT_OPTIONS,
        cancel: threading.Event | None = None,
    ) -> ChatStream:
        payload = self._payload(messages, options)
        return ChatStream(lambda out: self._generate(payload, cancel, out))

    def _generate(
        self, payload: dict[str, Any], cancel: threading.Event | None, out: ChatStream
    ) -> Iterator[str]:
        if cancelled(cancel, out):
            return
        started = time.monotonic()
        try:
            with (
                abort_on_cancel(cancel) as extensions,
                self._client.stream(
                    "POST", self._path, json=payload, extensions=extensions
                ) as response,
            ):
                if response.status_code >= 400:
                    raise status_error(response, self._what, self.base_url, self._model)
                yield from self._read(response, cancel, out, started)
        except httpx.HTTPError as exc:
            if cancelled(cancel, out):
                return
            raise translate(exc, self._what, self.base_url, self._timeout) from exc
