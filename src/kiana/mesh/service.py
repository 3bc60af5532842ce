"""The asyncio shell of the mesh: lifecycle, tasks and the links it serves.

``MeshService`` owns the sockets and tasks; everything it decides comes from the
sans-I/O cores (``Link``, ``Messenger``, ``PairingHost``, ``PeerHealth``, ``NodeCore``).
Blocking work (SQLite/PostgreSQL through the message store and the block store)
runs on one dedicated thread so that store calls keep their order and the event
loop never blocks.

This module holds the class, ``start``/``stop`` and link serving (accepting,
reading frames, link timers, link up/down). The rest comes from mixins:

- ``service_base.py``: shared state, ``_Peer``, ``now_ms``, ``_run``/``_spawn``/``_flush``;
- ``dialer.py``: addresses, mDNS discovery, dialling, ``connect``, WebRTC triggering;
- ``channels.py``: ``send``, the message pump, built-in channels (members, ping, sync),
  WebRTC signals, pins, ledger/sync summaries, inbox and ``peer_status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kiana.changes import Topic
from kiana.config import Settings
from kiana.errors import FrameError, MeshError, PeerUnreachableError
from kiana.mesh.carrier import Carrier
from kiana.mesh.channels import (
    MEMBERS_CHANNEL,
    PING_CHANNEL,
    SYNC_TICK_S,
    SYNC_TTL_MS,
    ChannelsMixin,
    _make_core,
)
from kiana.mesh.dialer import DialerMixin, _make_rtc
from kiana.mesh.health import Backoff
from kiana.mesh.link import Link, LinkClosed, LinkData, LinkHealth, LinkUp
from kiana.mesh.members import MemberDirectory
from kiana.mesh.message_store_sql import SqlMessageStore
from kiana.mesh.messenger import Messenger
from kiana.mesh.pairing_service import PairingService
from kiana.mesh.service_base import Handler, _Peer, now_ms
from kiana.mesh.tcp import PURPOSE_PAIR, FramedStream, format_address, read_preamble
from kiana.node import Node
from kiana.sync.core import CHANNELS, NodeCore
from kiana.sync.core_queue import CoreQueue

__all__ = [
    "MEMBERS_CHANNEL",
    "PING_CHANNEL",
    "SYNC_TICK_S",
    "SYNC_TTL_MS",
    "Handler",
    "MeshService",
    "now_ms",
]

log = logging.getLogger("kiana.mesh")


@dataclass(slots=True)
class _LinkRun:
    stream: Carrier
    link: Link
    kind: str
    up: asyncio.Future[str] | None
    peer: str | None = None


class MeshService(DialerMixin, ChannelsMixin):
    def __init__(self, node: Node, settings: Settings | None = None, *, seed: int | None = None):
        self.node = node
        self.settings = settings or node.settings
        self.rng = random.Random(seed)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiana-mesh")
        self.directory = MemberDirectory(node)
        self.messenger = Messenger(
            keys=node.keys,
            box_keys=self.directory.box_key,
            store=SqlMessageStore(node.store.db),
            rng=self.rng,
            max_body=self.settings.mesh_max_message_bytes,
            default_ttl_ms=self.settings.mesh_message_ttl * 1000,
            # Links are reliable (TCP, SCTP): a message sent on a live link is lost only if
            # the link dies, and a new link makes everything queued due at once. So retries
            # on a live link are rare and slow, never a flood of 1 MiB copies on a slow path.
            retry_base_ms=10_000,
            retry_cap_ms=60_000,
        )
        self.pairing = PairingService(self)
        self.peers: dict[str, _Peer] = {}
        self.manual: dict[str, str] = {}  # "host:port" -> source, device unknown until linked
        self.handlers: dict[str, Handler] = {}
        self.max_frame = self.settings.mesh_max_message_bytes + 65_536
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self._discovery: Any = None
        self.relay: Any = None  # WebRTC manager (rtc.py), when the webrtc extra is installed
        self.handlers[MEMBERS_CHANNEL] = self._on_members
        self.handlers[PING_CHANNEL] = self._on_ping
        self.core: NodeCore | None = None  # built in start(): it reads the ledger and op log
        for channel in CHANNELS:
            self.handlers[channel] = self._on_core
        self._embed = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiana-embed")
        self._to_index: list[Any] = []
        self._to_unindex: list[str] = []
        self._pongs: dict[str, asyncio.Future[int]] = {}
        self._dialing_manual: set[str] = set()
        self._pump_wake = asyncio.Event()
        self._signals_seen: dict[str, int] = {}
        self._core_queue = CoreQueue()
        self._core_wake = asyncio.Event()
        self._core_moved = asyncio.Event()
        self._core_task: asyncio.Task[Any] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        host = self.settings.mesh_host
        try:
            self._server = await asyncio.start_server(
                self._accept, host, self.settings.mesh_port, reuse_address=True
            )
        except OSError as exc:
            raise MeshError(
                f"cannot listen on {format_address(host, self.settings.mesh_port)}: "
                f"{exc.strerror or exc}; set mesh.port or stop the other process"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        await self.directory.refresh(self._run)
        self.core = await self._run(_make_core, self)
        for text in filter(None, (a.strip() for a in self.settings.mesh_peers.split(","))):
            self._add_manual(text, "config")
        for address, device in await self._run(self._stored_addresses):
            self._add_manual(address, "manual", device)
        if self.settings.mesh_discovery:
            await self._start_discovery()
        self.relay = _make_rtc(self)
        self._spawn(self._pump())
        self._spawn(self._sync_loop())
        self._core_task = self._spawn(self._core_worker())
        self._spawn(self._redeliver())
        self._spawn(self._dialer())
        log.info("mesh listening on port %d", self.port)

    async def stop(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()  # no new connections while we wind down
        for peer in self.peers.values():
            if peer.link is not None:
                peer.link.close("node shutting down")
                await self._flush(peer)
        if self._discovery is not None:
            with contextlib.suppress(Exception):
                await self._discovery.close()
        if self.relay is not None:
            # Not wait_for: on a timeout it cancels and then waits for the cancellation,
            # and aiortc's close can sit in shielded waits (a test run hung there).
            closing = asyncio.ensure_future(self.relay.close())
            _done, pending = await asyncio.wait({closing}, timeout=5.0)
            if pending:
                log.warning("WebRTC connections did not close within 5 s of stop")
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Every wait is bounded: stop() must return even if a task is slow to end.
            _done, stuck = await asyncio.wait(list(self._tasks), timeout=5.0)
            if stuck:
                log.warning("%d mesh tasks did not end within 5 s of stop", len(stuck))
        closers = [
            asyncio.ensure_future(peer.stream.close())
            for peer in self.peers.values()
            if peer.stream is not None
        ]
        if closers:  # bounded too: closing a WebRTC connection can wait for ever
            await asyncio.wait(closers, timeout=3.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self.core is not None:  # its verify thread, after the store jobs still queued
            with contextlib.suppress(RuntimeError):  # stopped before: the pool is shut
                self._db.submit(self.core.close)
        self._db.shutdown(wait=True)
        self._embed.shutdown(wait=True)

    # -- serving links ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # tracked, so stop() ends it before the store thread goes
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        stream = FramedStream(reader, writer, max_frame=self.max_frame)
        try:
            purpose = await read_preamble(reader)
        except FrameError as exc:
            log.warning("dropped a connection from %s: %s", stream.remote, exc.message)
            await stream.close()
            return
        if purpose == PURPOSE_PAIR:
            await self.pairing.serve(stream)
            return
        link = self._new_link(initiator=False)
        await self._serve_link(stream, link, "direct", None)

    async def _serve_link(
        self,
        stream: Carrier,
        link: Link,
        kind: str,
        up: asyncio.Future[str] | None,
    ) -> None:
        """Drive one link until it closes: read frames, run timers, handle events."""
        link.start()
        state = _LinkRun(stream=stream, link=link, kind=kind, up=up)
        timer = self._spawn(self._link_timer(state))
        try:
            self._flush_stream(stream, link)
            while True:
                try:
                    frame = await stream.read_frame()
                except EOFError:
                    await self._process(state)  # pending events first
                    if link.state.value != "closed":
                        link.close("connection closed")
                    break
                except (FrameError, ConnectionError, OSError) as exc:
                    log.warning("link from %s broken: %s", stream.remote, exc)
                    link.close("connection broken")
                    break
                link.receive_frame(frame, now_ms())
                await self._process(state)
                if link.state.value == "closed":
                    break
            await self._process(state)
        finally:
            timer.cancel()
            await stream.close()
            if up is not None and not up.done():
                up.set_exception(PeerUnreachableError("the link closed before the handshake ended"))
            await self._link_gone(state)

    async def _link_timer(self, state: _LinkRun) -> None:
        link = state.link
        while link.state.value != "closed":
            deadline = link.next_timer()
            delay = 0.5 if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
            await asyncio.sleep(min(delay, 0.5))
            link.tick(now_ms())
            await self._process(state)
        await self._process(state)

    async def _process(self, state: _LinkRun) -> None:
        link = state.link
        self._flush_stream(state.stream, link)
        while (event := link.next_event()) is not None:
            if isinstance(event, LinkUp):
                await self._link_up(state, event.peer)
            elif isinstance(event, LinkData):
                peer = self.peers.get(state.peer or "")
                if peer is not None and peer.link is state.link and peer.backoff is not None:
                    peer.backoff.reset()  # the peer talks to us: the link is really good
                await self._on_data(state.peer, event.payload)
            elif isinstance(event, LinkHealth):
                log.info("peer health: %s", event.state.value)
                self.node.changes.publish(Topic.PEERS)
            elif isinstance(event, LinkClosed) and event.error is not None:
                log.warning(
                    "link with %s closed: %s (%s)",
                    state.peer or state.stream.remote,
                    event.error.message,
                    event.error.code,
                )
                if state.up is not None and not state.up.done():
                    state.up.set_exception(event.error)
            self._flush_stream(state.stream, link)
        with contextlib.suppress(ConnectionError, OSError):
            await state.stream.drain()

    async def _link_up(self, state: _LinkRun, device: str) -> None:
        state.peer = device
        await self.directory.admit_from_handshake(device, self._run)
        peer = self.peers.setdefault(device, _Peer(device))
        old = peer.link
        if old is not None and old is not state.link and old.state.value != "closed":
            # Two links to one peer (both dialled at once, or an upgrade): keep the better one
            # (TCP over a direct WebRTC path over a relayed one); between equals keep the one
            # the smaller device id initiated.
            old_rank = _link_rank(peer.kind, peer.remote)
            new_rank = _link_rank(state.kind, state.stream.remote)
            keep_new = new_rank > old_rank or (
                new_rank == old_rank and (state.link.initiator == (self.node.device_id < device))
            )
            if not keep_new:
                state.link.close("duplicate link")
                return
            old.close("replaced by a better link")
            await self._flush(peer)
        peer.link = state.link
        peer.stream = state.stream
        peer.kind = state.kind
        peer.remote = state.stream.remote
        peer.since = now_ms()
        peer.last_error = ""
        if state.up is not None and not state.up.done():
            state.up.set_result(device)
        now = now_ms()
        await self._run(self.node.store.touch_device, device, now)
        await self._run(self.messenger.peer_up, device, now)
        await self._send_core(await self._run(self._core.peer_up, device, now))
        await self.send(device, MEMBERS_CHANNEL, self.directory.records_blob(), ttl_ms=60_000)
        self._wake.set()
        self._pump_wake.set()
        self.node.changes.publish(Topic.PEERS)

    async def _link_gone(self, state: _LinkRun) -> None:
        if state.peer is None:
            return
        peer = self.peers.get(state.peer)
        if peer is None or peer.link is not state.link:
            return
        peer.link = None
        peer.stream = None
        peer.kind = ""
        peer.backoff = peer.backoff or Backoff(self.rng)
        peer.next_dial = now_ms() + peer.backoff.next_delay()
        await self._run(self.node.store.touch_device, state.peer, now_ms())
        await self._run(self.messenger.peer_down, state.peer)
        await self._core_peer_down(state.peer)
        self._wake.set()
        self.node.changes.publish(Topic.PEERS)


def _link_rank(kind: str, remote: str) -> int:
    """How good a link is: 2 TCP, 1 WebRTC on a direct path, 0 relayed through TURN."""
    if kind == "relayed":
        return 0
    return 1 if remote.startswith("webrtc") else 2
