"""WebRTC carrier: a data channel (aiortc) for devices that cannot reach each other directly.

Signalling travels as sealed ``S`` frames (``signals.py``) over any live link, usually
the mind's home node, which forwards them without being able to read them. A signal
body is JSON: ``{"type": "offer" | "answer" | "error", "id": session, "sdp" | "reason"}``.
aiortc does not trickle: an offer or answer is sent once ICE gathering has finished.

ICE uses only the mind's own ``mesh.ice_servers`` (with ``mesh.turn_username`` and
``mesh.turn_password``). aiortc falls back to a public Google STUN server when
``iceServers`` is None, so the configuration always passes a list, empty by default:
then only host candidates exist and nobody outside is contacted.
``mesh.relay_only`` sets the ICE transport policy to "relay" (aioice gathers no host
or server-reflexive candidates, so a peer never learns this device's addresses).

Once the channel opens, the same Noise XX ``Link`` as on TCP runs over it
(``DataChannelCarrier``): only devices of the mind complete the handshake, and a TURN
server sees nothing but ciphertext. The link is "relayed" when the selected ICE pair
uses a relay candidate on either side, else "direct".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcicetransport import parse_stun_turn_uri

from kiana.config import Settings
from kiana.errors import ConfigError, FrameError, MeshError, PeerUnreachableError, RelayError

if TYPE_CHECKING:
    from kiana.mesh.service import MeshService

log = logging.getLogger("kiana.mesh.rtc")

CONNECT_TIMEOUT_S = 10.0  # answer + ICE + DTLS + SCTP + Noise, after gathering
TURN_PROBE_TIMEOUT_S = 5.0
HIGH_WATER = 1 << 20  # drain() waits while more than this is buffered in the channel
LOW_WATER = 256 * 1024
DRAIN_STALL_S = 30.0
CHANNEL_LABEL = "kiana-link"


def ice_configuration(settings: Settings) -> RTCConfiguration:
    """The RTCConfiguration from the mind's settings: never None servers (no public STUN)."""
    servers: list[RTCIceServer] = []
    has_turn = False
    for url in filter(None, (u.strip() for u in settings.mesh_ice_servers.split(","))):
        try:
            parsed = parse_stun_turn_uri(url)
        except ValueError as exc:
            raise ConfigError(f"mesh.ice_servers: not a stun:/turn: URL: {url!r}") from exc
        if parsed["scheme"] in ("turn", "turns"):
            has_turn = True
            servers.append(
                RTCIceServer(
                    urls=url,
                    username=settings.mesh_turn_username or None,
                    credential=settings.mesh_turn_password or None,
                )
            )
        else:
            servers.append(RTCIceServer(urls=url))
    if settings.mesh_relay_only and not has_turn:
        raise ConfigError("mesh.relay_only is set but mesh.ice_servers names no turn: server")
    policy = RTCIceTransportPolicy.RELAY if settings.mesh_relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def turn_server(settings: Settings) -> tuple[str, int, str] | None:
    """(host, port, transport) of the first turn: URL, the one aiortc uses."""
    for url in filter(None, (u.strip() for u in settings.mesh_ice_servers.split(","))):
        parsed = parse_stun_turn_uri(url)
        if parsed["scheme"] in ("turn", "turns"):
            return str(parsed["host"]), int(parsed["port"]), str(parsed["transport"])
    return None


class DataChannelCarrier:
    """The ``Carrier`` protocol over one ordered, reliable data channel: a frame per message."""

    def __init__(self, pc: Any, channel: Any, *, max_frame: int, remote: str = "webrtc") -> None:
        self.pc = pc
        self.channel = channel
        self.max_frame = max_frame
        self.remote = remote
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._low = asyncio.Event()
        self._closed = False
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        channel.on("bufferedamountlow", self._low.set)
        pc.on("connectionstatechange", self._on_state)

    def _on_message(self, message: bytes | str) -> None:
        self._queue.put_nowait(message.encode() if isinstance(message, str) else message)

    def _on_close(self) -> None:
        self._queue.put_nowait(None)

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._queue.put_nowait(None)

    async def read_frame(self) -> bytes:
        """The next message; ``EOFError`` once the channel or the connection closed."""
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # every later read ends too
            raise EOFError
        if len(item) > self.max_frame:
            raise FrameError(f"a frame of {len(item)} bytes exceeds the limit of {self.max_frame}")
        return item

    def write_frames(self, frames: list[bytes]) -> None:
        if not frames:
            return
        if self._closed or self.channel.readyState != "open":
            raise ConnectionError("the data channel is closed")
        for frame in frames:
            self.channel.send(frame)

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_STALL_S
        while self.channel.bufferedAmount > HIGH_WATER and self.channel.readyState == "open":
            self._low.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._low.wait(), 0.5)
            if loop.time() > deadline:
                raise ConnectionError("the data channel stalled (nothing sent in 30 s)")

    async def close(self) -> None:
        self._closed = True
        await close_pc(self.pc)


async def close_pc(pc: Any, timeout_s: float = 3.0) -> None:
    """Close an ``RTCPeerConnection`` within ``timeout_s``; its UDP sockets are closed anyway.

    Bounded, and without cancelling it: a second ``close()`` waits on the first, which
    never finishes if the first was cancelled half-way. When aiortc's close does not
    finish in time (a loaded machine), the ICE sockets it would have closed are closed
    here, so no socket outlives the connection.
    """
    closing = asyncio.ensure_future(pc.close())
    _done, pending = await asyncio.wait({closing}, timeout=timeout_s)
    if pending:
        log.warning(
            "a WebRTC connection did not close within %g s: its sockets are closed", timeout_s
        )
        release_sockets(pc)


def release_sockets(pc: Any) -> int:
    """Close the UDP sockets of ``pc``'s ICE agents (aiortc/aioice internals); how many."""
    closed = 0
    for transport in list(getattr(pc, "_RTCPeerConnection__iceTransports", ())):
        connection = getattr(getattr(transport, "iceGatherer", None), "_connection", None)
        for protocol in list(getattr(connection, "_protocols", ())):
            udp = getattr(protocol, "transport", None)
            if udp is not None and not udp.is_closing():
                udp.close()
                closed += 1
    return closed


class RtcManager:
    """Offers and answers WebRTC links for a ``MeshService`` (``service.relay``)."""

    def __init__(self, service: MeshService) -> None:
        self.service = service
        self.settings = service.settings
        self.configuration = ice_configuration(self.settings)
        self.turn = turn_server(self.settings)
        self._pcs: set[Any] = set()
        self._pending: dict[str, tuple[str, asyncio.Future[str]]] = {}
        self._closing = False  # set by close(): no new connection after that

    # -- both sides ---------------------------------------------------------------------

    def _new_pc(self) -> Any:
        if self._closing:
            raise PeerUnreachableError("WebRTC links are shutting down")
        pc = RTCPeerConnection(configuration=self.configuration)
        self._pcs.add(pc)

        def _gone() -> None:
            if pc.connectionState == "closed":
                self._pcs.discard(pc)

        pc.on("connectionstatechange", _gone)
        return pc

    async def _discard(self, pc: Any) -> None:
        self._pcs.discard(pc)
        await close_pc(pc)

    async def _check_gathered(self, pc: Any) -> None:
        """A configured TURN server that gave no relay candidate: find out why, say it."""
        if self.turn is None or " typ relay" in pc.localDescription.sdp:
            return
        raise await self._diagnose_turn()

    async def _diagnose_turn(self) -> RelayError:
        from aioice import stun, turn

        assert self.turn is not None
        host, port, transport = self.turn
        where = f"{host}:{port}"
        try:
            endpoint, _ = await asyncio.wait_for(
                turn.create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server_addr=(host, port),
                    username=self.settings.mesh_turn_username or None,
                    password=self.settings.mesh_turn_password or None,
                    transport=transport,
                ),
                TURN_PROBE_TIMEOUT_S,
            )
        except stun.TransactionFailed as exc:
            code = exc.response.error_code
            if code in (401, 403, 437, 441):
                return RelayError(
                    f"the TURN server {where} refused the credentials (STUN error {code}): "
                    "check mesh.turn_username and mesh.turn_password"
                )
            return RelayError(f"the TURN server {where} refused the allocation (STUN error {code})")
        except (stun.TransactionTimeout, TimeoutError):
            return RelayError(f"the TURN server {where} did not answer")
        except (OSError, ConnectionError) as exc:
            return RelayError(f"cannot reach the TURN server {where}: {exc}")
        endpoint.close()
        return RelayError(f"the TURN server {where} gave no relay candidate in time")

    def _path(self, pc: Any) -> tuple[str, str]:
        """("relayed" | "direct", printable remote) of the selected ICE candidate pair."""
        try:
            connection = pc.sctp.transport.transport._connection
            pair = next(iter(connection._nominated.values()))
            local, remote = pair.protocol.local_candidate, pair.remote_candidate
        except (AttributeError, StopIteration):
            kind = "relayed" if self.settings.mesh_relay_only else "direct"
            return kind, f"webrtc:{kind}"
        kind = "relayed" if "relay" in (local.type, remote.type) else "direct"
        return kind, f"webrtc:{remote.host}:{remote.port} ({remote.type})"

    def _signal(self, device: str, body: dict[str, str]) -> None:
        if self.service.send_signal(device, json.dumps(body).encode()) == 0:
            raise PeerUnreachableError(f"no link can carry signalling to device {device}")

    # -- offering side ----------------------------------------------------------------

    async def connect(self, device: str) -> str:
        """Open a WebRTC link to ``device``; its id once the Noise handshake completed."""
        service = self.service
        loop = asyncio.get_running_loop()
        session = secrets.token_hex(12)
        pc = self._new_pc()
        try:
            channel = pc.createDataChannel(CHANNEL_LABEL, ordered=True)
            carrier = DataChannelCarrier(pc, channel, max_frame=service.max_frame)
            opened: asyncio.Future[None] = loop.create_future()

            def _open() -> None:
                if not opened.done():
                    opened.set_result(None)

            channel.on("open", _open)
            await pc.setLocalDescription(await pc.createOffer())
            await self._check_gathered(pc)
            answer: asyncio.Future[str] = loop.create_future()
            self._pending[session] = (device, answer)
            offer = {"type": "offer", "id": session, "sdp": pc.localDescription.sdp}
            self._signal(device, offer)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                sdp = await answer
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
                await opened
                kind, carrier.remote = self._path(pc)
                link = service._new_link(initiator=True, expect=device)
                up: asyncio.Future[str] = loop.create_future()
                service._spawn(service._serve_link(carrier, link, kind, up))
                pc = None  # the link owns it now: _serve_link closes it
                return await up
        except TimeoutError as exc:
            raise PeerUnreachableError(
                f"no WebRTC link to device {device} within {CONNECT_TIMEOUT_S:g} s"
            ) from exc
        except asyncio.CancelledError:
            if pc is not None:  # before any await: a second cancel must not leak its sockets
                release_sockets(pc)
            raise
        except ValueError as exc:  # aiortc: an SDP it cannot use
            raise PeerUnreachableError(f"WebRTC negotiation with {device} failed: {exc}") from exc
        finally:
            self._pending.pop(session, None)
            if pc is not None:
                await self._discard(pc)

    # -- answering side -----------------------------------------------------------------

    async def on_signal(self, sender: str, body: bytes) -> None:
        """A signal sealed by ``sender`` (a member: the service checked) for this device."""
        try:
            msg = json.loads(body)
            kind, session = str(msg["type"]), str(msg["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable WebRTC signal from %s", sender)
            return
        if kind == "offer":
            if self._closing:
                return
            peer = self.service.peers.get(sender)
            if peer is not None and peer.link is not None and not peer.remote.startswith("webrtc"):
                # a TCP link is better than any WebRTC path: do not build a second link
                with contextlib.suppress(MeshError):
                    self._signal(sender, {"type": "error", "id": session, "reason": "linked"})
                return
            self.service._spawn(self._answer(sender, session, str(msg.get("sdp", ""))))
            return
        pending = self._pending.get(session)
        if pending is None or pending[0] != sender or pending[1].done():
            return
        if kind == "answer":
            pending[1].set_result(str(msg.get("sdp", "")))
        elif kind == "error":
            reason = str(msg.get("reason", "unknown"))[:200]
            pending[1].set_exception(RelayError(f"device {sender} could not answer: {reason}"))

    async def _answer(self, sender: str, session: str, sdp: str) -> None:
        service = self.service
        loop = asyncio.get_running_loop()
        pc = self._new_pc()
        arrived: asyncio.Future[DataChannelCarrier] = loop.create_future()

        def _channel(channel: Any) -> None:
            if not arrived.done():
                arrived.set_result(DataChannelCarrier(pc, channel, max_frame=service.max_frame))

        pc.on("datachannel", _channel)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await self._check_gathered(pc)
            self._signal(sender, {"type": "answer", "id": session, "sdp": pc.localDescription.sdp})
            carrier = await asyncio.wait_for(arrived, CONNECT_TIMEOUT_S)
        except asyncio.CancelledError:
            release_sockets(pc)  # stop() cancelled us half-way: no socket may outlive it
            self._pcs.discard(pc)
            raise
        except (MeshError, TimeoutError, ValueError) as exc:
            await self._discard(pc)
            error = exc if isinstance(exc, MeshError) else PeerUnreachableError(f"WebRTC: {exc!r}")
            self._record_error(sender, error)
            if not isinstance(exc, PeerUnreachableError):
                with contextlib.suppress(MeshError):
                    self._signal(sender, {"type": "error", "id": session, "reason": error.message})
            return
        kind, carrier.remote = self._path(pc)
        link = service._new_link(initiator=False, expect=sender)
        await service._serve_link(carrier, link, kind, None)

    def _record_error(self, device: str, error: MeshError) -> None:
        log.info("WebRTC answer to %s failed: %s", device, error.message)
        peer = self.service.peers.get(device)
        if peer is not None and peer.link is None:
            peer.last_error = error.message

    async def close(self) -> None:
        self._closing = True
        for pending in self._pending.values():
            if not pending[1].done():
                pending[1].cancel()
        pcs = list(self._pcs)
        self._pcs.clear()
        if pcs:
            await asyncio.gather(*(close_pc(pc) for pc in pcs))
