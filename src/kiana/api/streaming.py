"""Blocking iterators on worker threads, consumed by the event loop; streamed responses.

The assistant's event iterator blocks (retrieval, embedding, generation).
``ThreadEvents`` runs one on a worker thread and hands each item to the event
loop through an ``asyncio.Queue`` (``loop.call_soon_threadsafe``), so the loop
only ever awaits. Its ``cancel`` event is passed to the iterator: setting it
stops a generation between tokens.

``EventStreamResponse`` sends such a stream as Server-Sent Events and listens
for the client going away meanwhile: a disconnect sets ``cancel`` at once,
also while the model is still reading the prompt and nothing is being sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("kiana.api")

T = TypeVar("T")

_ITEM, _ERROR, _END = "item", "error", "end"


class ThreadEvents(Generic[T]):
    """``produce(cancel)``'s items, made on an executor thread, as an async iterator.

    Must be created on the event loop. An exception raised by the iterator is
    raised again from ``__anext__``. ``done`` completes when the thread is finished.
    """

    def __init__(
        self, executor: Executor, produce: Callable[[threading.Event], Iterator[T]]
    ) -> None:
        self.cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._finished = False
        self.done: asyncio.Future[None] = self._loop.run_in_executor(executor, self._run, produce)

    def _put(self, message: tuple[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, message)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel.set()

    def _run(self, produce: Callable[[threading.Event], Iterator[T]]) -> None:
        try:
            if self.cancel.is_set():  # given up before this thread got to it
                return
            items = produce(self.cancel)
            try:
                for item in items:
                    self._put((_ITEM, item))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # noqa: BLE001 - handed over to the event loop
            self._put((_ERROR, exc))
        finally:
            self._put((_END, None))

    def __aiter__(self) -> ThreadEvents[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        kind, value = await self._queue.get()
        if kind == _ITEM:
            item: T = value
            return item
        self._finished = True
        if kind == _ERROR:
            raise value
        raise StopAsyncIteration

    async def head(
        self,
        until: Callable[[T], bool],
        receive: Receive | None = None,
        wait: float | None = None,
    ) -> list[T]:
        """Items up to and including the first for which ``until`` is true.

        Read before a response starts, so an error raised by then comes out of
        here and the client gets a clean error status. Returns early (with what
        there is) after ``wait`` seconds, or when the iterator ends.
        """
        return await self._read(receive, until, wait)

    async def collect(self, receive: Receive | None = None) -> list[T]:
        """All items."""
        return await self._read(receive, None, None)

    async def _read(
        self, receive: Receive | None, until: Callable[[T], bool] | None, wait: float | None
    ) -> list[T]:
        """Read items; with ``receive``, a client disconnect meanwhile sets ``cancel``."""
        items: list[T] = []
        error: Exception | None = None
        done = False
        try:
            async with anyio.create_task_group() as group:
                if receive is not None:
                    group.start_soon(_cancel_on_disconnect, receive, self.cancel)
                try:
                    with anyio.move_on_after(math.inf if wait is None else wait):
                        async for item in self:
                            items.append(item)
                            if until is not None and until(item):
                                break
                    done = True
                except Exception as exc:  # noqa: BLE001 - raised below, not as an ExceptionGroup
                    error = exc
                finally:
                    group.cancel_scope.cancel()
        finally:
            if not done:  # failed or cancelled from outside: stop the generation
                self.cancel.set()
        if error is not None:
            raise error
        return items


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone (call only after the request body was read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_on_disconnect(receive: Receive, cancel: threading.Event) -> None:
    await wait_for_disconnect(receive)
    cancel.set()


class EventStreamResponse(StreamingResponse):
    """Server-Sent Events from an async iterator of encoded events.

    A client disconnect, noticed either by listening or by a failed send, sets
    ``cancel`` and closes the iterator; the worker thread then stops generating.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        cancel: threading.Event,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        merged = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        super().__init__(content, status_code=status_code, headers=merged)
        self._content = content
        self.cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error: Exception | None = None
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await wait_for_disconnect(receive)
                self.cancel.set()
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
                async for chunk in self._content:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client went away while we were sending
                self.cancel.set()
            except Exception as exc:  # noqa: BLE001 - raised below, not as an ExceptionGroup
                error = exc
            finally:
                with anyio.CancelScope(shield=True):
                    close = getattr(self._content, "aclose", None)
                    if close is not None:
                        await close()
                group.cancel_scope.cancel()
        if error is not None:
            self.cancel.set()
            raise error


def sse(event: str | None, data: str) -> bytes:
    """One Server-Sent Event; ``data`` must be a single line (compact JSON is)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()
