"""What every part of ``MeshService`` shares: the peer table, the store thread, the tasks.

``MeshService`` (``service.py``) is built from mixins that each own one concern:
``DialerMixin`` (``dialer.py``: addresses, discovery, dialling, WebRTC triggering) and
``ChannelsMixin`` (``channels.py``: messages, built-in channels, memory sync, status).
``MeshBase`` declares the state they all touch (filled in by ``MeshService.__init__``)
and the helpers they all call: ``_run`` (blocking work on the one store thread, in
order), ``_spawn`` (a tracked task that ``stop()`` ends) and ``_flush`` (write what a
link has to send).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from kiana.config import Settings
from kiana.mesh.carrier import Carrier
from kiana.mesh.health import Backoff
from kiana.mesh.link import Link
from kiana.mesh.members import MemberDirectory
from kiana.mesh.messenger import Messenger
from kiana.node import Node

log = logging.getLogger("kiana.mesh")
P = ParamSpec("P")
T = TypeVar("T")

Handler = Callable[[str, str, bytes], Awaitable[None]]  # (sender, channel, body)


DRAIN_TIMEOUT_S = 5.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Peer:
    """What the service knows about one device: addresses, live link, dial backoff."""

    device: str
    addresses: dict[str, str] = field(default_factory=dict)  # "host:port" -> source
    link: Link | None = None
    stream: Carrier | None = None
    kind: str = ""  # "direct" or "relayed"
    remote: str = ""
    since: int = 0
    backoff: Backoff | None = None
    next_dial: int = 0
    dialing: bool = False
    last_error: str = ""


class MeshBase:
    """State and helpers shared by the mixins of ``MeshService`` (set in its ``__init__``)."""

    node: Node
    settings: Settings
    rng: random.Random
    directory: MemberDirectory
    messenger: Messenger
    peers: dict[str, _Peer]
    relay: Any  # WebRTC manager (rtc.py), when the webrtc extra is installed
    _db: ThreadPoolExecutor
    _tasks: set[asyncio.Task[Any]]
    _closing: bool

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closing:
            log.error("mesh task failed", exc_info=task.exception())

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args, **kwargs))

    def _flush_stream(self, stream: Carrier, link: Link) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            stream.write_frames(link.data_to_send())

    async def _flush(self, peer: _Peer) -> None:
        if peer.link is not None and peer.stream is not None:
            self._flush_stream(peer.stream, peer.link)
            # Bounded: a peer that stops reading must not stall the caller (e.g. stop()).
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(peer.stream.drain(), DRAIN_TIMEOUT_S)
