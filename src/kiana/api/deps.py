"""What the lifespan opens and every route needs: the node, the offloader, the token,
and the assistant (built on first use)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, TypeVar

from fastapi import Depends, Request
from starlette.applications import Starlette

from kiana.api.errors import NotReadyError
from kiana.api.sessions import Sessions
from kiana.api.streaming import ThreadEvents
from kiana.config import Settings
from kiana.node import Node
from kiana.offload import Offloader

if TYPE_CHECKING:
    from kiana.assistant.engine import Assistant
    from kiana.mesh.service import MeshService

T = TypeVar("T")

# Generations run on their own pool, never on the offloader's reader threads: a long
# answer must not hold up reads. Pool threads are reused, so the store's per-thread
# reader connections are too (a fresh thread per request would open one each time).
# The embedded model serialises generations itself; these threads wait on its lock.
GENERATION_THREADS = 4


class ChatRuntime:
    """One ``Assistant`` (so one ``ChatModel``) per app, built on first use on a thread.

    ``run`` starts a blocking event iterator on the generation pool; ``close``
    cancels every running generation, waits for the threads and closes the model.
    """

    def __init__(self, node: Node, *, threads: int = GENERATION_THREADS) -> None:
        self.node = node
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kiana-chat")
        self._assistant: Assistant | None = None
        self._lock = asyncio.Lock()
        self._running: set[threading.Event] = set()
        self._closed = False

    @property
    def assistant_built(self) -> bool:
        return self._assistant is not None

    @property
    def running(self) -> int:
        """Generations started and not yet finished (their threads still busy)."""
        return len(self._running)

    async def assistant(self) -> Assistant:
        if self._assistant is None:
            async with self._lock:
                if self._closed:
                    raise NotReadyError("the service is stopping")
                if self._assistant is None:
                    loop = asyncio.get_running_loop()
                    self._assistant = await loop.run_in_executor(self._executor, self._build)
        return self._assistant

    def _build(self) -> Assistant:
        from kiana.assistant.factory import build_assistant

        return build_assistant(self.node)

    def run(self, produce: Callable[[threading.Event], Iterator[T]]) -> ThreadEvents[T]:
        if self._closed:
            raise NotReadyError("the service is stopping")
        events = ThreadEvents(self._executor, produce)
        self._running.add(events.cancel)
        events.done.add_done_callback(lambda _: self._running.discard(events.cancel))
        return events

    async def close(self) -> None:
        self._closed = True
        for cancel in list(self._running):
            cancel.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self._assistant is not None:
            model, self._assistant = self._assistant.model, None
            await asyncio.to_thread(model.close)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    node: Node
    off: Offloader
    token: str | None  # None only when settings.api_require_token is False
    chat: ChatRuntime
    mesh: MeshService | None = None  # None when mesh.enabled is false
    sessions: Sessions = field(default_factory=Sessions)  # dashboard logins (in memory)


def runtime_of(app: Starlette) -> Runtime:
    """The runtime stored on ``app.state`` by the lifespan."""
    runtime = getattr(app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise NotReadyError("the service is starting or stopping")
    return runtime


def get_runtime(request: Request) -> Runtime:
    return runtime_of(request.app)


Rt = Annotated[Runtime, Depends(get_runtime)]
