"""In-process change notices: memory, peers or sync changed, tell whoever watches.

A ``ChangeFeed`` belongs to one open ``Node`` (never to the module): the node
publishes ``Topic.BLOCKS`` after it stores or erases blocks, the mesh service
publishes what it stores by sync and when peers or sync progress change. Any
thread may publish; listeners run on the publishing thread and must only note
the change (they must not block or raise).

``ChangeWatch`` is the asyncio side: it collects the topics published since the
last ``wait`` and wakes one task at most once per batch, however many notices
arrive (a bulk sync publishes many). Writes by another process on the same home
publish nothing here: watchers keep a slower poll for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import TracebackType


class Topic(enum.Enum):
    BLOCKS = "blocks"  # blocks stored or erased
    PEERS = "peers"  # a link came up or went down, or its health changed
    SYNC = "sync"  # sync progress: records exchanged, a peer in sync or behind


@dataclass(frozen=True, slots=True)
class Change:
    topic: Topic
    local: bool = False  # written by this process on this device (not received by sync)


Listener = Callable[[Change], None]


class ChangeFeed:
    """Thread-safe broadcast of ``Change`` notices to subscribed listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[int, Listener] = {}
        self._next = 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every change from now on; returns the unsubscribe function."""
        with self._lock:
            key = self._next
            self._next += 1
            self._listeners[key] = listener

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.pop(key, None)

        return unsubscribe

    def publish(self, topic: Topic, *, local: bool = False) -> None:
        change = Change(topic, local)
        with self._lock:
            listeners = list(self._listeners.values())
        for listener in listeners:
            listener(change)

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._listeners)


class ChangeWatch:
    """The changes of a feed for one asyncio task; create it inside the running loop.

    ``topics`` limits what is collected; ``local_only`` keeps only this process's writes.
    """

    def __init__(
        self,
        feed: ChangeFeed,
        topics: Collection[Topic] = tuple(Topic),
        *,
        local_only: bool = False,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._lock = threading.Lock()
        self._pending: set[Topic] = set()
        self._topics = frozenset(topics)
        self._local_only = local_only
        self._unsubscribe = feed.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:  # any thread
        if change.topic not in self._topics or (self._local_only and not change.local):
            return
        with self._lock:
            first = not self._pending
            self._pending.add(change.topic)
        if first:  # one wake-up per batch, however many notices arrive before the task runs
            # RuntimeError: the loop is closed, so nobody is left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> set[Topic]:
        """The topics changed since the last call, waiting up to ``timeout`` s for one.

        An empty set means nothing was announced in that time.
        """
        with self._lock:
            ready = bool(self._pending)
        if not ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
        with self._lock:
            topics, self._pending = self._pending, set()
        return topics

    def close(self) -> None:
        self._unsubscribe()

    def __enter__(self) -> ChangeWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["Change", "ChangeFeed", "ChangeWatch", "Listener", "Topic"]
