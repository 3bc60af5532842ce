"""The asyncio shell of the mesh: listener, dialer, timers, routing, pairing host.

``MeshService`` owns the sockets and tasks; everything it decides comes from the
sans-I/O cores (``Link``, ``Messenger``, ``PairingHost``, ``PeerHealth``).
Blocking work (SQLite/PostgreSQL through the message store and the block store)
runs on one dedicated thread so that store calls keep their order and the event
loop never blocks.
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
from kiana.errors import FrameError, KianaError, MeshError, PeerUnreachableError
from kiana.ledger import SqlLedgerStore
from kiana.mesh.carrier import Carrier
from kiana.mesh.health import Backoff, PeerState
from kiana.mesh.link import Link, LinkClosed, LinkData, LinkHealth, LinkUp
from kiana.mesh.members import MemberDirectory
from kiana.mesh.message_store import SqlMessageStore
from kiana.mesh.messenger import MessageExpired, MessageReceived, MessageRejected, Messenger
from kiana.mesh.pairing_service import PairingService
from kiana.mesh.signals import SIGNAL_FRAME, encode_signal, open_signal, peek_signal
from kiana.mesh.tcp import (
    PURPOSE_LINK,
    PURPOSE_PAIR,
    FramedStream,
    format_address,
    open_framed,
    parse_address,
    read_preamble,
)
from kiana.node import Node
from kiana.sync.core import CHANNELS, NodeCore
from kiana.sync.crdt import SqlOpStore
from kiana.sync.engine import SyncEngine
from kiana.sync.shared import PINS, set_pin

log = logging.getLogger("kiana.mesh")
P = ParamSpec("P")
T = TypeVar("T")

MEMBERS_CHANNEL = "members"
SYNC_TTL_MS = 10 * 60_000  # sync messages are re-derived on reconnect; no need to keep them long
SYNC_TICK_S = 0.25
PING_CHANNEL = "ping"

Handler = Callable[[str, str, bytes], Awaitable[None]]  # (sender, channel, body)


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


class MeshService:
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
            await self.relay.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for peer in self.peers.values():
            if peer.stream is not None:
                await peer.stream.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._db.shutdown(wait=True)
        self._embed.shutdown(wait=True)

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

    # -- discovery and addresses -------------------------------------------------------

    async def _start_discovery(self) -> None:
        from kiana.mesh.discovery import Discovery, PeerSeen

        def seen(p: PeerSeen) -> None:
            if p.pairing:
                return
            for host in p.addresses:
                self.learn_address(p.device_id, format_address(host, p.port), "mdns")

        try:
            self._discovery = Discovery(
                mind_id=self.node.mind_id,
                device_id=self.node.device_id,
                port=self.port,
                on_peer=seen,
            )
            await self._discovery.start()
        except (OSError, KianaError) as exc:
            log.warning("mDNS discovery unavailable: %s", exc)
            self._discovery = None

    def learn_address(self, device: str, address: str, source: str) -> None:
        if device == self.node.device_id:
            return
        peer = self.peers.setdefault(device, _Peer(device))
        fresh = address not in peer.addresses
        peer.addresses[address] = source
        if fresh:
            peer.next_dial = 0
            if peer.link is not None and peer.kind == "relayed":
                log.info("direct address learned for a relayed peer: upgrading")
            self._wake.set()

    def _add_manual(self, text: str, source: str, device: str = "") -> str:
        host, port = parse_address(text, self.settings.mesh_port)
        address = format_address(host, port)
        if device:
            self.learn_address(device, address, source)
        else:
            self.manual[address] = source
        self._wake.set()
        return address

    async def add_address(self, text: str) -> str:
        """``kiana peers add host:port``: remember and dial an address (device learned on link)."""
        try:
            address = self._add_manual(text, "manual")
        except ValueError as exc:
            from kiana.errors import InputError

            raise InputError(f"not a host:port address: {text!r}") from exc
        await self._run(self._store_address, address, "")
        return address

    def _stored_addresses(self) -> list[tuple[str, str]]:
        rows = self.node.store.db.read(
            lambda c: c.all("SELECT address, device_id FROM mesh_addresses ORDER BY added")
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def _store_address(self, address: str, device: str) -> None:
        self.node.store.db.write(
            lambda c: c.execute(
                "INSERT INTO mesh_addresses (address, device_id, source, added) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE SET device_id = excluded.device_id",
                (address, device, "manual", now_ms()),
            )
        )

    # -- dialing ---------------------------------------------------------------------------

    async def _dialer(self) -> None:
        while True:
            now = now_ms()
            for peer in list(self.peers.values()):
                wants_direct = peer.link is None or peer.kind == "relayed"
                if not wants_direct or peer.dialing or now < peer.next_dial:
                    continue
                if not peer.addresses or not self.directory.is_active(peer.device):
                    continue
                peer.dialing = True
                self._spawn(self._dial_peer(peer))
            if self.relay is not None:
                self._maybe_webrtc(now)
            for address in list(self.manual):
                if address not in self._dialing_manual and not self._linked_address(address):
                    self._dialing_manual.add(address)
                    self._spawn(self._dial_manual(address))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    def _maybe_webrtc(self, now: int) -> None:
        """Peers we cannot reach directly get a WebRTC link, signalled through a linked peer.

        Only the device with the smaller id makes the offer, so two offers never cross.
        """
        if not any(p.link is not None for p in self.peers.values()):
            return  # no path for the signalling
        for d in self.directory.devices():
            device = d.device_id
            if not d.active or device == self.node.device_id or self.node.device_id > device:
                continue
            peer = self.peers.setdefault(device, _Peer(device))
            if peer.link is not None or peer.dialing or now < peer.next_dial:
                continue
            if peer.addresses and peer.backoff is None:
                continue  # a direct address not tried yet: TCP first
            peer.dialing = True
            self._spawn(self._dial_webrtc(peer))

    async def _dial_webrtc(self, peer: _Peer) -> None:
        assert self.relay is not None
        try:
            await self.relay.connect(peer.device)
        except MeshError as exc:
            peer.last_error = exc.message
            log.info("WebRTC link to %s failed: %s", peer.device, exc.code)
        finally:
            peer.dialing = False
            if peer.link is None:
                peer.backoff = peer.backoff or Backoff(self.rng)
                peer.next_dial = now_ms() + peer.backoff.next_delay()

    def _linked_address(self, address: str) -> bool:
        return any(p.link is not None and address in p.addresses for p in self.peers.values())

    async def _dial_peer(self, peer: _Peer) -> None:
        try:
            for address in list(peer.addresses):
                host, port = parse_address(address, self.settings.mesh_port)
                try:
                    await self.connect(host, port, expect=peer.device)
                    return
                except MeshError as exc:
                    peer.last_error = exc.message
        finally:
            peer.dialing = False
            if peer.link is None or peer.kind == "relayed":
                peer.backoff = peer.backoff or Backoff(self.rng)
                peer.next_dial = now_ms() + peer.backoff.next_delay()

    async def _dial_manual(self, address: str) -> None:
        backoff = Backoff(self.rng)
        try:
            while not self._closing and address in self.manual:
                if self._linked_address(address):
                    await asyncio.sleep(1.0)
                    continue
                host, port = parse_address(address, self.settings.mesh_port)
                try:
                    device = await self.connect(host, port)
                    self.learn_address(device, address, self.manual[address])
                    await self._run(self._store_address, address, device)
                    backoff.reset()
                    await asyncio.sleep(1.0)
                except MeshError:
                    await asyncio.sleep(backoff.next_delay() / 1000)
        finally:
            self._dialing_manual.discard(address)

    async def connect(
        self, host: str, port: int, *, expect: str | None = None, timeout_s: float = 5.0
    ) -> str:
        """Open a direct link; returns the peer's device id once the handshake completed."""
        stream = await open_framed(
            host, port, PURPOSE_LINK, max_frame=self.max_frame, timeout_s=timeout_s
        )
        link = self._new_link(initiator=True, expect=expect)
        up: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._spawn(self._serve_link(stream, link, "direct", up))
        try:
            return await asyncio.wait_for(asyncio.shield(up), timeout_s)
        except TimeoutError as exc:
            link.close("handshake timed out")
            raise PeerUnreachableError(f"no handshake with {host}:{port} in time") from exc

    def _new_link(self, *, initiator: bool, expect: str | None = None) -> Link:
        return Link(
            initiator=initiator,
            keys=self.node.keys,
            mind_id=self.node.mind_id,
            lookup=self.directory.lookup,
            now=now_ms(),
            heartbeat_ms=self.settings.mesh_heartbeat_ms,
            max_frame=self.max_frame,
            expect=expect,
            record=self.directory.own_record(),
        )

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

    def _flush_stream(self, stream: Carrier, link: Link) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            stream.write_frames(link.data_to_send())

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
            # Two links to one peer (both dialled at once, or an upgrade): keep the direct one;
            # between equals keep the one the smaller device id initiated.
            keep_new = (peer.kind == "relayed" and state.kind == "direct") or (
                peer.kind == state.kind and (state.link.initiator == (self.node.device_id < device))
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
        await self._run(self._core.peer_down, state.peer)
        self._wake.set()

    async def _flush(self, peer: _Peer) -> None:
        if peer.link is not None and peer.stream is not None:
            self._flush_stream(peer.stream, peer.link)
            with contextlib.suppress(ConnectionError, OSError):
                await peer.stream.drain()

    # -- messages ----------------------------------------------------------------------------------

    async def send(
        self,
        to: str,
        channel: str,
        body: bytes,
        *,
        ttl_ms: int | None = None,
        ordered: bool = False,
    ) -> str:
        """Queue an end-to-end message; it is durable once this returns."""
        msg_id = await self._run(
            functools.partial(
                self.messenger.send, to, channel, body, now=now_ms(), ttl_ms=ttl_ms, ordered=ordered
            )
        )
        self._pump_wake.set()
        return msg_id

    async def _on_data(self, sender: str | None, payload: bytes) -> None:
        if sender is None:
            return
        if payload[:1] == SIGNAL_FRAME:
            await self._on_signal(sender, payload)
            return
        events = await self._run(self.messenger.receive, sender, payload, now_ms())
        await self._handle_events(events)
        self._pump_wake.set()

    async def _handle_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                await self._deliver(event.sender, event.channel, event.body, event.msg_id)
            elif isinstance(event, MessageRejected):
                log.warning("message from %s rejected: %s", event.peer, event.reason)
            elif isinstance(event, MessageExpired):
                log.info("message %s to %s expired undelivered", event.msg_id, event.peer)

    # -- WebRTC signalling: sealed end to end, forwarded by any peer linked to the target --------

    def send_signal(self, to: str, body: bytes) -> int:
        """Seal ``body`` for ``to`` and hand it to every live link; returns how many carried it."""
        box_key = self.directory.box_key(to)
        if box_key is None:
            raise MeshError(f"device {to} is not an active member")
        frame = encode_signal(self.node.keys, box_key, self.node.device_id, to, body)
        sent = 0
        for peer in self.peers.values():
            if peer.link is not None and peer.link.state.value == "up":
                with contextlib.suppress(MeshError):
                    peer.link.send(frame)
                    sent += 1
                    self._spawn(self._flush(peer))
        return sent

    async def _on_signal(self, via: str, frame: bytes) -> None:
        try:
            signal_id, sender, to = peek_signal(frame)
        except FrameError as exc:
            log.warning("bad signal from %s: %s", via, exc.message)
            return
        if signal_id in self._signals_seen:
            return
        self._signals_seen[signal_id] = now_ms()
        if len(self._signals_seen) > 4096:
            for key in list(self._signals_seen)[:2048]:
                del self._signals_seen[key]
        if to != self.node.device_id:
            target = self.peers.get(to)
            if target is not None and target.link is not None and target.link.state.value == "up":
                with contextlib.suppress(MeshError):
                    target.link.send(frame)
                    await self._flush(target)
            return
        box_key = self.directory.box_key(sender)
        if box_key is None or self.relay is None:
            return
        try:
            body = open_signal(self.node.keys, box_key, frame)
        except FrameError as exc:
            log.warning("signal from %s refused: %s", sender, exc.message)
            return
        await self.relay.on_signal(sender, body)

    async def _deliver(self, sender: str, channel: str, body: bytes, msg_id: str) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            try:
                await handler(sender, channel, body)
            except KianaError as exc:
                log.warning("message on %s from %s refused: %s", channel, sender, exc.code)
            await self._run(self.messenger.consume, msg_id)

    def _poll_messenger(self, now: int) -> tuple[list[tuple[str, bytes]], list[Any]]:
        frames = self.messenger.poll(now)
        return frames, self.messenger.take_events()

    async def _pump(self) -> None:
        """Send what the messenger has due, on whatever link reaches the peer."""
        while True:
            try:
                frames, events = await self._run(self._poll_messenger, now_ms())
            except KianaError as exc:
                log.warning("message pump failed: %s", exc.code)
                await asyncio.sleep(1.0)
                continue
            await self._handle_events(events)
            touched: set[str] = set()
            for device, frame in frames:
                peer = self.peers.get(device)
                if peer is None or peer.link is None or peer.link.state.value != "up":
                    continue
                with contextlib.suppress(MeshError):
                    peer.link.send(frame)
                    touched.add(device)
            for device in touched:
                await self._flush(self.peers[device])
            wake = await self._run(self.messenger.next_wakeup)
            delay = 1.0 if wake is None else max(0.0, (wake - now_ms()) / 1000)
            self._pump_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pump_wake.wait(), min(delay, 1.0))

    # -- memory sync ----------------------------------------------------------------------------

    @property
    def _core(self) -> NodeCore:
        if self.core is None:
            raise MeshError("the mesh has not started")
        return self.core

    @property
    def sync(self) -> SyncEngine:
        return self._core.engine

    async def _on_core(self, sender: str, channel: str, body: bytes) -> None:
        await self._send_core(await self._run(self._core.handle, sender, channel, body, now_ms()))

    async def _send_core(self, out: list[tuple[str, str, bytes]]) -> None:
        for peer, channel, body in out:
            await self.send(peer, channel, body, ttl_ms=SYNC_TTL_MS)

    async def _sync_loop(self) -> None:
        """Push local writes (from any process) at once; re-reconcile now and then."""
        while True:
            try:
                await self._send_core(await self._run(self._core.tick, now_ms()))
            except KianaError as exc:  # e.g. the store is briefly unavailable: try again
                log.warning("sync tick failed: %s", exc.code)
                await asyncio.sleep(1.0)
            if self._to_index or self._to_unindex:
                blocks, self._to_index = self._to_index, []
                gone, self._to_unindex = self._to_unindex, []
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._embed, self._index, blocks, gone)
            await asyncio.sleep(SYNC_TICK_S)

    def _stored(self, blocks: list[Any], erased: list[str]) -> None:
        """Called by the sync engine (store thread): embed new blocks later, on another thread."""
        self._to_index.extend(blocks)
        self._to_unindex.extend(erased)

    def _index(self, blocks: list[Any], erased: list[str]) -> None:
        if erased:
            self.node.unindex_blocks(erased)
        for start in range(0, len(blocks), 256):
            self.node.index_blocks(blocks[start : start + 256])

    async def _redeliver(self) -> None:
        """Messages stored but not handled before a crash are handled now (once: the handlers
        are idempotent and consume them when done)."""
        for item in await self._run(self.messenger.inbox, 10_000):
            if item.channel in self.handlers:
                await self._deliver(item.sender, item.channel, item.body, item.msg_id)

    # -- built-in channels -------------------------------------------------------------------------

    async def _on_members(self, sender: str, channel: str, body: bytes) -> None:
        revoked = await self.directory.apply_blob(body, self._run)
        for device in revoked:
            peer = self.peers.get(device)
            if peer is not None and peer.link is not None:
                peer.link.close("device revoked")
                await self._flush(peer)

    async def _on_ping(self, sender: str, channel: str, body: bytes) -> None:
        if body.startswith(b"ping:"):
            await self.send(sender, PING_CHANNEL, b"pong:" + body[5:], ttl_ms=30_000)
        elif body.startswith(b"pong:"):
            fut = self._pongs.pop(body[5:].decode(errors="replace"), None)
            if fut is not None and not fut.done():
                fut.set_result(now_ms())

    async def ping(self, device: str, timeout_s: float = 10.0) -> float:
        """End-to-end round trip through the messenger (sealed, acknowledged), in ms."""
        token = f"{self.rng.getrandbits(64):016x}"
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pongs[token] = fut
        start = now_ms()
        await self.send(
            device, PING_CHANNEL, b"ping:" + token.encode(), ttl_ms=int(timeout_s * 1000)
        )
        try:
            end = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError as exc:
            raise PeerUnreachableError(
                f"device {device} did not answer in {timeout_s:g} s"
            ) from exc
        finally:
            self._pongs.pop(token, None)
        return float(end - start)

    async def announce_revocation(self, device: str) -> None:
        """After a local revocation: cut the device off and tell every other member."""
        await self.directory.refresh(self._run)
        peer = self.peers.get(device)
        if peer is not None and peer.link is not None:
            peer.link.close("device revoked")
            await self._flush(peer)
        await self.announce_members()

    async def announce_members(self) -> None:
        """Queue the membership list for every other active device (durable: offline ones
        get it when they return)."""
        blob = self.directory.records_blob()
        for d in self.directory.devices():
            if d.active and d.device_id != self.node.device_id:
                await self.send(d.device_id, MEMBERS_CHANNEL, blob)

    async def pin(self, block_id: str, pinned: bool) -> list[str]:
        """Pin or unpin a block in the shared state (every device sees it); the pins after."""
        return await self._run(set_pin, self._core.state, block_id, pinned)

    async def pins(self) -> list[str]:
        return sorted(await self._run(self._core.state.members, PINS))

    async def ledger_summary(self) -> dict[str, Any]:
        core = self._core
        return {
            "height": core.ledger.head.height,
            "head": core.ledger.head.hash,
            "pending": len(core.ledger.pending),
            "authorities": list(core.ledger.authorities()),
        }

    async def sync_status(self) -> dict[str, Any]:
        peers = await self._run(self.sync.status)
        for p in peers:
            p["name"] = self.directory.name(p["device"])
        counts = await self._run(self._core.counts)
        return {
            "items": self.sync.counts()["items"],
            "peers": peers,
            "rejected": {
                "blocks": counts["sync_rejected"],
                "state": counts["state_rejected"],
                "ledger": counts["ledger_rejected"],
                "other": counts["core_rejected"],
            },
        }

    async def inbox(self, *, channel: str | None = None, consume: bool = False) -> list[Any]:
        """Delivered messages on channels without a built-in handler (``app.*``)."""
        items = await self._run(self.messenger.inbox, 1000)
        picked = [m for m in items if channel is None or m.channel == channel]
        if consume:
            for m in picked:
                await self._run(self.messenger.consume, m.msg_id)
        return picked

    # -- status ------------------------------------------------------------------------------------

    def peer_status(self) -> list[dict[str, Any]]:
        out = []
        for peer in sorted(self.peers.values(), key=lambda p: p.device):
            link = peer.link
            state = link.health.state.value if link is not None else PeerState.DOWN.value
            if link is None and peer.dialing:
                state = PeerState.CONNECTING.value
            out.append(
                {
                    "device": peer.device,
                    "name": self.directory.name(peer.device),
                    "state": state,
                    "link": peer.kind or None,
                    "remote": peer.remote if link is not None else None,
                    "rtt_ms": None
                    if link is None or link.health.rtt_ms is None
                    else round(link.health.rtt_ms, 2),
                    "since": peer.since if link is not None else None,
                    "bytes_in": link.bytes_in if link is not None else 0,
                    "bytes_out": link.bytes_out if link is not None else 0,
                    "addresses": sorted(peer.addresses),
                    "last_error": peer.last_error or None,
                }
            )
        return out


def _make_core(service: MeshService) -> NodeCore:
    """Blocks, shared state and ledger for this device (runs on the store thread)."""
    node = service.node
    me = node.store.device(node.device_id)
    person = me.person if me is not None else node.genesis.person

    def same_person(peer: str) -> bool:
        other = service.directory.lookup(peer)
        return other is not None and other.person == person

    core = NodeCore(
        node.store,
        node.keys,
        node.genesis,
        my_person=person,
        same_person=same_person,
        ledger_store=SqlLedgerStore(node.store.db),
        state_store=SqlOpStore(node.store.db),
    )
    core.engine.on_stored = service._stored
    return core


def _make_rtc(service: MeshService) -> Any:
    """The WebRTC manager when aiortc (the ``webrtc`` extra) is installed, else None."""
    try:
        from kiana.mesh.rtc import RtcManager
    except ImportError:
        log.info("WebRTC links unavailable: install kiana[webrtc]")
        return None
    return RtcManager(service)


@dataclass(slots=True)
class _LinkRun:
    stream: Carrier
    link: Link
    kind: str
    up: asyncio.Future[str] | None
    peer: str | None = None
