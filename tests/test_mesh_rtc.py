"""WebRTC links (``kiana.mesh.rtc``) in one process, on loopback.

Three real services: C (the "home node") and A and B, each paired with C and
linked to it over TCP. A and B never learn each other's address, so their link is
a WebRTC data channel whose offer and answer travel sealed through C. With no ICE
servers configured only host candidates exist; aioice never offers 127.0.0.1, so
the tests pin host candidates to loopback (no packet to any other address).
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from tests.mesh_helpers import (
    init_node,
    linked,
    pair_into,
    settings_for,
    start_service,
    stop_service,
    until,
    until_async,
)

from kiana.errors import (
    ConfigError,
    FrameError,
    HandshakeError,
    MeshError,
    PeerUnreachableError,
    RelayError,
)
from kiana.mesh.rtc import DataChannelCarrier, RtcManager, ice_configuration
from kiana.mesh.service import MeshService, _link_rank

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def loopback_host_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@asynccontextmanager
async def trio(tmp_path: Path, seed: int = 1) -> AsyncIterator[tuple[MeshService, ...]]:
    """C, then A and B paired with C and pointed at it; yields (a, b, c) once A↔B linked."""
    c = await start_service(init_node(tmp_path / "c", "home"), seed=seed)
    started = [c]
    try:
        env = {"KIANA_MESH_PEERS": f"127.0.0.1:{c.port}"}
        a_settings = await pair_into(c, tmp_path / "a", "phone", **env)
        b_settings = await pair_into(c, tmp_path / "b", "laptop", **env)
        a = await start_service(a_settings, seed=seed + 1)
        started.append(a)
        b = await start_service(b_settings, seed=seed + 2)
        started.append(b)
        await until(lambda: linked(a, c) and linked(b, c), 15, "TCP links to the home node")
        await until(lambda: linked(a, b), 20, "the WebRTC link between A and B")
        yield a, b, c
    finally:
        for mesh in reversed(started):
            await stop_service(mesh)


def peer_of(mesh: MeshService, other: MeshService) -> dict[str, Any]:
    return next(p for p in mesh.peer_status() if p["device"] == other.node.device_id)


async def received(mesh: MeshService, text: bytes) -> bool:
    return any(m.body == text for m in await mesh.inbox(channel="app.test"))


def test_webrtc_link_signalled_through_the_home_node(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with trio(tmp_path) as (a, b, c):
            assert b.node.device_id not in {d for p in a.peers.values() for d in p.addresses}
            for x, y in ((a, b), (b, a)):
                status = peer_of(x, y)
                assert status["state"] == "up"
                assert status["link"] == "direct"  # host candidates on loopback, no TURN
                assert status["remote"].startswith("webrtc:127.0.0.1:")
                assert status["addresses"] == []  # no TCP address was ever known
                assert peer_of(x, c)["link"] == "direct"
                assert not peer_of(x, c)["remote"].startswith("webrtc")
            await a.send(b.node.device_id, "app.test", b"hello from A")
            await b.send(a.node.device_id, "app.test", b"hello from B")
            big = bytes(range(256)) * 4096  # 1 MiB: many Noise records, many channel messages
            await a.send(b.node.device_id, "app.test", big)
            await until_async(lambda: received(b, b"hello from A"))
            await until_async(lambda: received(a, b"hello from B"))
            await until_async(lambda: received(b, big), 20)
            # both ends of the WebRTC link carried data (C only forwarded signals)
            assert peer_of(a, b)["bytes_out"] > len(big) > peer_of(a, c)["bytes_out"]
            assert await a.ping(b.node.device_id) < 5000

    asyncio.run(scenario())


def test_a_tcp_link_is_never_replaced_by_a_webrtc_one(tmp_path: Path) -> None:
    """An offer to a peer already linked over TCP is refused; TCP stays the link.

    CI once saw C's link to A become WebRTC: C offered while A's TCP link was being
    set up, both paths counted as "direct" and the tie-break kept C's WebRTC link.
    """

    async def scenario() -> None:
        async with trio(tmp_path, seed=5) as (a, _, c):
            tcp_remote = peer_of(c, a)["remote"]
            assert c.relay is not None
            with pytest.raises(RelayError, match="linked"):
                await c.relay.connect(a.node.device_id)
            await asyncio.sleep(0.3)
            assert peer_of(c, a)["remote"] == tcp_remote
            assert not peer_of(a, c)["remote"].startswith("webrtc")

    asyncio.run(scenario())


def test_link_rank_prefers_tcp_then_direct_webrtc_then_relayed() -> None:
    assert _link_rank("direct", "127.0.0.1:7000") > _link_rank("direct", "webrtc:10.0.0.2:5 (host)")
    assert _link_rank("direct", "webrtc:10.0.0.2:5 (srflx)") > _link_rank("relayed", "webrtc:x")


# -- privacy: the default configuration contacts no STUN server ------------------------------

_seen: list[tuple[str, Any]] | None = None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _seen is None:
        return
    if event in ("socket.connect", "socket.sendto"):
        _seen.append((event, args[1]))
    elif event in ("socket.getaddrinfo", "socket.gethostbyname"):
        _seen.append((event, args[0]))


@pytest.fixture
def network_audit() -> Iterator[list[tuple[str, Any]]]:
    global _seen, _hooked
    if not _hooked:
        sys.addaudithook(_audit)  # cannot be removed: it records only while _seen is a list
        _hooked = True
    _seen = []
    try:
        yield _seen
    finally:
        _seen = None


def is_loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def test_default_configuration_has_no_ice_servers(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert settings.mesh_ice_servers == ""
    config = ice_configuration(settings)
    assert config.iceServers == []  # not None: aiortc would substitute Google's STUN server
    assert config.iceTransportPolicy.value == "all"


def test_setup_contacts_only_loopback(tmp_path: Path, network_audit: list[tuple[str, Any]]) -> None:
    async def scenario() -> None:
        async with trio(tmp_path, seed=11) as (a, b, _):
            for mesh in (a, b):
                assert isinstance(mesh.relay, RtcManager)
                assert mesh.relay.configuration.iceServers == []
            await a.send(b.node.device_id, "app.test", b"private")
            await until_async(lambda: received(b, b"private"))

    asyncio.run(scenario())
    sendto = [dest for event, dest in network_audit if event == "socket.sendto"]
    connects = [dest for event, dest in network_audit if event == "socket.connect"]
    assert sendto, "the WebRTC setup sent no UDP at all: the audit hook saw nothing"
    assert connects
    for event, dest in network_audit:
        host = dest[0] if isinstance(dest, tuple) else dest
        assert is_loopback(host), f"{event} to {dest}"


# -- only members complete the handshake ---------------------------------------------------------


def test_a_non_member_cannot_complete_the_handshake_over_the_channel(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await start_service(init_node(tmp_path / "a", "home"), seed=21)
        x = await start_service(init_node(tmp_path / "x", "stranger"), seed=22)
        try:
            a_id, x_id = a.node.device_id, x.node.device_id
            opened: list[str] = []

            # A bridge that carries signals both ways, as a home node would if it
            # forwarded for a stranger: the data channel itself opens.
            def bridge(src: MeshService, dst: MeshService) -> Any:
                def send_signal(to: str, body: bytes) -> int:
                    src._spawn(dst.relay.on_signal(src.node.device_id, body))
                    return 1

                return send_signal

            a.send_signal = bridge(a, x)  # type: ignore[method-assign]
            x.send_signal = bridge(x, a)  # type: ignore[method-assign]
            original = x.relay._path

            def path(pc: Any) -> tuple[str, str]:
                opened.append("channel open")
                return original(pc)  # type: ignore[no-any-return]

            x.relay._path = path
            with pytest.raises(HandshakeError):
                await x.relay.connect(a_id)
            assert opened == ["channel open"]
            await asyncio.sleep(0.5)
            assert a.peers.get(x_id) is None or a.peers[x_id].link is None
            assert x.peers.get(a_id) is None or x.peers[a_id].link is None
        finally:
            await stop_service(x)
            await stop_service(a)

    asyncio.run(scenario())


def test_connect_without_a_signalling_path(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = await start_service(init_node(tmp_path / "c", "home"), seed=31)
        try:
            a_settings = await pair_into(c, tmp_path / "a", "phone")
            with pytest.raises(MeshError, match="no link can carry"):
                await c.relay.connect(await asyncio.to_thread(lambda: _device_id(a_settings)))
        finally:
            await stop_service(c)

    asyncio.run(scenario())


def _device_id(settings: Any) -> str:
    from kiana.home import load_identity

    keys, _ = load_identity(settings)
    return str(keys.device_id)


# -- link upgrade: a relayed peer moves to a direct TCP link ------------------------------------


def test_relayed_link_upgrades_to_direct_tcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loopback host candidates make a "direct" WebRTC path; call it relayed, as behind NATs.
    monkeypatch.setattr(RtcManager, "_path", lambda self, pc: ("relayed", "webrtc:relay"))

    async def scenario() -> None:
        async with trio(tmp_path, seed=41) as (a, b, _):
            assert peer_of(a, b)["link"] == peer_of(b, a)["link"] == "relayed"
            a.learn_address(b.node.device_id, f"127.0.0.1:{b.port}", "manual")
            await until(
                lambda: (
                    linked(a, b)
                    and peer_of(a, b)["link"] == "direct"
                    and peer_of(b, a)["link"] == "direct"
                ),
                15,
                "the upgrade to TCP",
            )
            assert peer_of(a, b)["remote"] == f"127.0.0.1:{b.port}"
            await a.send(b.node.device_id, "app.test", b"after the upgrade")
            await until_async(lambda: received(b, b"after the upgrade"))

    asyncio.run(scenario())


# -- configuration and the carrier ---------------------------------------------------------------


def test_ice_configuration_from_settings(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        KIANA_MESH_ICE_SERVERS="stun:192.0.2.1:3478, turn:192.0.2.1:3478?transport=tcp",
        KIANA_MESH_TURN_USERNAME="u",
        KIANA_MESH_TURN_PASSWORD="p",
        KIANA_MESH_RELAY_ONLY="1",
    )
    config = ice_configuration(settings)
    assert [(s.urls, s.username, s.credential) for s in config.iceServers] == [
        ("stun:192.0.2.1:3478", None, None),
        ("turn:192.0.2.1:3478?transport=tcp", "u", "p"),
    ]
    assert config.iceTransportPolicy.value == "relay"
    with pytest.raises(ConfigError, match="no turn"):
        ice_configuration(settings_for(tmp_path, KIANA_MESH_RELAY_ONLY="1"))
    with pytest.raises(ConfigError, match="not a stun"):
        ice_configuration(settings_for(tmp_path, KIANA_MESH_ICE_SERVERS="http://x"))


class FakeEmitter:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def on(self, event: str, handler: Any) -> None:
        self.handlers[event] = handler


class FakeChannel(FakeEmitter):
    def __init__(self) -> None:
        super().__init__()
        self.readyState = "open"
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


class FakePc(FakeEmitter):
    connectionState = "connected"
    closed = False

    async def close(self) -> None:
        self.closed = True


def test_data_channel_carrier() -> None:
    async def scenario() -> None:
        pc, channel = FakePc(), FakeChannel()
        carrier = DataChannelCarrier(pc, channel, max_frame=10)
        carrier.write_frames([b"one", b"two"])
        assert channel.sent == [b"one", b"two"]
        await carrier.drain()
        channel.handlers["message"](b"frame")
        channel.handlers["message"]("text")
        channel.handlers["message"](b"x" * 11)
        assert await carrier.read_frame() == b"frame"
        assert await carrier.read_frame() == b"text"
        with pytest.raises(FrameError):
            await carrier.read_frame()
        channel.handlers["close"]()
        for _ in range(2):
            with pytest.raises(EOFError):
                await carrier.read_frame()
        channel.readyState = "closed"
        with pytest.raises(ConnectionError):
            carrier.write_frames([b"late"])
        await carrier.close()
        assert pc.closed
        # a failed ICE connection ends the reader too
        pc2, channel2 = FakePc(), FakeChannel()
        carrier2 = DataChannelCarrier(pc2, channel2, max_frame=10)
        pc2.connectionState = "failed"
        pc2.handlers["connectionstatechange"]()
        with pytest.raises(EOFError):
            await asyncio.wait_for(carrier2.read_frame(), 1)

    asyncio.run(scenario())


def test_release_sockets_closes_every_ice_socket_of_a_connection() -> None:
    """The fallback when aiortc's close does not finish in time: no UDP socket leaks."""
    from aiortc import RTCPeerConnection

    from kiana.mesh.rtc import close_pc, release_sockets

    async def scenario() -> None:
        pc = RTCPeerConnection()
        pc.createDataChannel("x")
        await pc.setLocalDescription(await pc.createOffer())  # gathers: binds UDP sockets
        transports = [
            p.transport
            for t in pc._RTCPeerConnection__iceTransports  # type: ignore[attr-defined]
            for p in t.iceGatherer._connection._protocols
        ]
        assert transports and not any(t.is_closing() for t in transports)
        assert release_sockets(pc) == len(transports)
        assert all(t.is_closing() for t in transports)
        assert release_sockets(pc) == 0  # idempotent
        await close_pc(pc)  # aiortc's own close still ends normally afterwards
        assert pc.connectionState == "closed"

    asyncio.run(scenario())


def _ice_sockets(pc: Any) -> list[Any]:
    return [
        p.transport
        for t in pc._RTCPeerConnection__iceTransports
        for p in t.iceGatherer._connection._protocols
    ]


def test_a_cancelled_answer_leaks_no_socket_and_a_closed_manager_makes_no_connection(
    tmp_path: Path,
) -> None:
    """stop() cancels tasks half-way: an answer cut off keeps no UDP socket open (CI saw
    leaked sockets reported in a later test), and nothing new starts after close()."""
    from aiortc import RTCPeerConnection

    async def scenario() -> None:
        async with trio(tmp_path, seed=31) as (a, b, _):
            assert b.relay is not None
            offerer = RTCPeerConnection()
            offerer.createDataChannel("x")
            await offerer.setLocalDescription(await offerer.createOffer())
            before = set(b.relay._pcs)
            task = asyncio.ensure_future(
                b.relay._answer(a.node.device_id, "s" * 24, offerer.localDescription.sdp)
            )
            await until(lambda: len(b.relay._pcs - before) == 1, 10, "the answering connection")
            (pc,) = b.relay._pcs - before
            await until(lambda: bool(_ice_sockets(pc)), 10, "its ICE sockets")
            await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.wait({task}, timeout=5)
            assert task.cancelled()
            assert all(sock.is_closing() for sock in _ice_sockets(pc))
            assert pc not in b.relay._pcs
            await offerer.close()
            await b.relay.close()
            with pytest.raises(PeerUnreachableError, match="shutting down"):
                await b.relay.connect(a.node.device_id)

    asyncio.run(scenario())
