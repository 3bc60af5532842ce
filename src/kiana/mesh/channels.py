"""What ``MeshService`` does with messages: channels, signals, memory sync, status.

``send`` queues a durable end-to-end message in the ``Messenger``; ``_pump`` sends
what is due on whatever link reaches the peer, and ``_on_data`` turns received
frames into messages for the channel handlers. The built-in channels are
``members`` (the membership list), ``ping`` and the ``NodeCore`` channels (blocks,
shared state, ledger), which ``_sync_loop`` also ticks. Messages on the ``NodeCore``
channels are queued (``kiana.sync.core_queue``: each channel in order, block sync
first) and ``_core_worker`` hands them to the store thread one at a time, so the
link's reader never waits behind a long ledger catch-up. WebRTC signals are sealed
end to end and forwarded by any peer linked to the target. Pins, ledger and sync
summaries, the inbox and ``peer_status`` are what the CLI and the API read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kiana.changes import ChangeWatch, Topic
from kiana.errors import FrameError, KianaError, MeshError, PeerUnreachableError
from kiana.ledger import SqlLedgerStore
from kiana.mesh.health import PeerState
from kiana.mesh.messenger import MessageExpired, MessageReceived, MessageRejected
from kiana.mesh.service_base import Handler, MeshBase, now_ms
from kiana.mesh.signals import SIGNAL_FRAME, encode_signal, open_signal, peek_signal
from kiana.sync.core import CHANNELS, NodeCore
from kiana.sync.core_queue import CoreQueue, Queued
from kiana.sync.crdt import SqlOpStore
from kiana.sync.engine import SyncEngine
from kiana.sync.shared import PINS, set_pin

log = logging.getLogger("kiana.mesh")

MEMBERS_CHANNEL = "members"
SYNC_TTL_MS = 10 * 60_000  # sync messages are re-derived on reconnect; no need to keep them long
SYNC_TICK_S = 0.25
PING_CHANNEL = "ping"
PEER_DOWN_WAIT_S = 30.0  # a gone peer's queued messages are handled before its peer_down


class ChannelsMixin(MeshBase):
    """Messages, built-in channels, memory sync and status for ``MeshService``."""

    handlers: dict[str, Handler]
    core: NodeCore | None  # built in start(): it reads the ledger and op log
    _embed: ThreadPoolExecutor
    _to_index: list[Any]
    _to_unindex: list[str]
    _pongs: dict[str, asyncio.Future[int]]
    _pump_wake: asyncio.Event
    _signals_seen: dict[str, int]
    _core_queue: CoreQueue  # delivered NodeCore messages waiting for the store thread
    _core_wake: asyncio.Event  # set when something is queued
    _core_moved: asyncio.Event  # set when a queued message was handled
    _core_task: asyncio.Task[Any] | None  # the worker (started in start())

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
        if channel in CHANNELS and self.core is not None:
            await self._queue_core(sender, channel, body, msg_id)
            return
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

    async def _queue_core(self, sender: str, channel: str, body: bytes, msg_id: str) -> None:
        """Hand a stored message to ``_core_worker`` (block sync goes first, ``core_queue``).

        The link's reader goes on to the next frame at once, so a burst of ledger messages
        no longer holds back the sync messages behind it; it waits only while more than
        ``MAX_QUEUED_BYTES`` are queued (the messages are stored: nothing is lost)."""
        self._core_queue.push(sender, channel, body, msg_id)
        self._core_wake.set()
        while self._core_queue.full and not self._closing:
            self._core_moved.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._core_moved.wait(), 1.0)

    async def _core_worker(self) -> None:
        """Handle queued ``NodeCore`` messages one at a time, in ``CoreQueue`` order; each is
        consumed (removed from the inbox) once handled, so a crash before that redelivers it."""
        queue = self._core_queue
        while True:
            item = queue.pop()
            if item is None:
                self._core_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._core_wake.wait(), 1.0)
                continue
            try:
                await self._handle_queued(item)
            finally:
                queue.done(item)
                self._core_moved.set()

    async def _handle_queued(self, item: Queued) -> None:
        try:
            await self._on_core(item.peer, item.channel, item.body)
        except KianaError as exc:
            log.warning("message on %s from %s refused: %s", item.channel, item.peer, exc.code)
        except Exception:  # a bug: keep the worker (and every other message) going, loudly
            log.exception("handling a %s message from %s failed", item.channel, item.peer)
            return  # not consumed: handled again after a restart
        await self._run(self.messenger.consume, item.msg_id)

    async def _core_peer_down(self, device: str) -> None:
        """Tell the core a peer is gone once the messages it sent before are handled (they
        may still be queued; handled after ``peer_down`` they would leave stale state)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PEER_DOWN_WAIT_S
        while self._core_queue.pending(device) and not self._closing:
            if self._core_task is None or self._core_task.done():
                break  # no worker (the service is being torn down): nothing will move
            if loop.time() > deadline:
                log.warning("messages from %s still queued %g s after its link went",
                            device, PEER_DOWN_WAIT_S)  # fmt: skip
                break
            self._core_moved.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._core_moved.wait(), 1.0)
        peer = self.peers.get(device)
        if peer is None or peer.link is None:  # not linked again meanwhile
            await self._run(self._core.peer_down, device)

    async def _on_core(self, sender: str, channel: str, body: bytes) -> None:
        await self._send_core(await self._run(self._core.handle, sender, channel, body, now_ms()))
        self.node.changes.publish(Topic.SYNC)

    async def _send_core(self, out: list[tuple[str, str, bytes]]) -> None:
        for peer, channel, body in out:
            await self.send(peer, channel, body, ttl_ms=SYNC_TTL_MS)

    async def _sync_loop(self) -> None:
        """Push local writes at once (this process's when they happen, another process's
        within a tick); re-reconcile now and then."""
        with ChangeWatch(self.node.changes, (Topic.BLOCKS,), local_only=True) as written:
            while True:
                try:
                    out = await self._run(self._core.tick, now_ms())
                    await self._send_core(out)
                    if out:
                        self.node.changes.publish(Topic.SYNC)
                except KianaError as exc:  # e.g. the store is briefly unavailable: try again
                    log.warning("sync tick failed: %s", exc.code)
                    await asyncio.sleep(1.0)
                if self._to_index or self._to_unindex:
                    blocks, self._to_index = self._to_index, []
                    gone, self._to_unindex = self._to_unindex, []
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(self._embed, self._index, blocks, gone)
                await written.wait(SYNC_TICK_S)

    def _stored(self, blocks: list[Any], erased: list[str]) -> None:
        """Called by the sync engine (store thread): embed new blocks later, on another thread."""
        self._to_index.extend(blocks)
        self._to_unindex.extend(erased)
        self.node.changes.publish(Topic.BLOCKS)  # the dashboard shows them at once

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
        refused_ops = await self._run(lambda: dict(self._core.state_gossip.refused))
        for p in peers:
            p["name"] = self.directory.name(p["device"])
            p["state_rejected"] = refused_ops.get(p["device"], 0)
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


def _make_core(service: ChannelsMixin) -> NodeCore:
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
