"""MeshService over real loopback sockets: membership spreading, revocation, faults, restarts."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from tests.mesh_helpers import (
    init_node,
    linked,
    pair_into,
    start_service,
    stop_service,
    until,
)

from kiana.mesh.service import MeshService

pytestmark = pytest.mark.timeout(90)


async def inbox_texts(mesh: MeshService, channel: str = "app.t") -> list[bytes]:
    return [m.body for m in await mesh.inbox(channel=channel)]


def test_members_spread_and_a_new_device_is_admitted_from_its_handshake(tmp_path: Path) -> None:
    async def main() -> None:
        a = await start_service(init_node(tmp_path / "a"))
        sb = await pair_into(a, tmp_path / "b", "b")
        b = await start_service(sb, seed=2)
        await b.add_address(f"127.0.0.1:{a.port}")
        await until(lambda: linked(a, b), what="a-b")
        # c joins while b is connected: a announces c to b on the members channel.
        sc = await pair_into(a, tmp_path / "c", "c")
        c_id = next(d.device_id for d in a.directory.devices() if d.name == "c")
        await until(lambda: b.directory.is_active(c_id), what="b learns c")
        # d joins while b is offline: b never heard of d, d presents its record.
        await stop_service(b)
        sd = await pair_into(a, tmp_path / "d", "d")
        d = await start_service(sd, seed=4)
        b = await start_service(sb, seed=3)
        d_id = d.node.device_id
        # Checked before b's dialer first runs: once b links to a, a tells b about d.
        assert not b.directory.is_active(d_id)
        await d.add_address(f"127.0.0.1:{b.port}")
        await until(lambda: linked(b, d), what="d-b via record in the handshake")
        assert b.directory.is_active(d_id)
        assert b.node.store.device(d_id) is not None  # written to b's store
        await d.send(b.node.device_id, "app.t", b"from d")
        for _ in range(200):
            if await inbox_texts(b) == [b"from d"]:
                break
            await asyncio.sleep(0.02)
        assert await inbox_texts(b) == [b"from d"]
        c = await start_service(sc, seed=5)
        for svc in (d, c, b, a):
            await stop_service(svc)

    asyncio.run(main())


def test_revocation_spreads_and_the_device_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        a = await start_service(init_node(tmp_path / "a"))
        b = await start_service(await pair_into(a, tmp_path / "b", "b"), seed=2)
        c = await start_service(await pair_into(a, tmp_path / "c", "c"), seed=3)
        for x in (b, c):
            await x.add_address(f"127.0.0.1:{a.port}")
        await c.add_address(f"127.0.0.1:{b.port}")
        await until(lambda: linked(a, b) and linked(a, c) and linked(b, c), what="triangle")
        from kiana.mesh.enroll import revoke_device

        await asyncio.to_thread(revoke_device, a.node, c.node.device_id)
        await a.announce_revocation(c.node.device_id)
        await until(lambda: not b.directory.is_active(c.node.device_id), what="b learns")
        await until(lambda: not linked(b, c) and not linked(a, c), what="c cut off")
        await asyncio.sleep(1.0)  # c keeps dialling, with backoff; it is refused every time
        assert not linked(b, c) and not linked(a, c)
        assert linked(a, b)
        for svc in (c, b, a):
            await stop_service(svc)

    asyncio.run(main())


def _raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(8)
        try:
            return sock.recv(100)
        except (TimeoutError, ConnectionResetError):
            return b""


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"KIA",
        b"KIANAL" + (10).to_bytes(4, "big") + b"abc",  # truncated frame
        b"KIANAL" + (1 << 31).to_bytes(4, "big"),  # oversized length prefix
        b"KIANAL" + (32).to_bytes(4, "big") + bytes(32),  # garbage handshake
        b"KIANAP" + (5).to_bytes(4, "big") + b"{bad}",  # garbage pairing message
    ],
    ids=["http", "half-preamble", "truncated", "oversized", "garbage-noise", "garbage-pair"],
)
def test_garbage_on_the_port_is_dropped_and_the_node_keeps_serving(
    tmp_path: Path, payload: bytes
) -> None:
    async def main() -> None:
        a = await start_service(init_node(tmp_path / "a"))
        b = await start_service(await pair_into(a, tmp_path / "b", "b"), seed=2)
        await b.add_address(f"127.0.0.1:{a.port}")
        await until(lambda: linked(a, b))
        answer = await asyncio.to_thread(_raw, a.port, payload)
        assert b"KIANA" not in answer
        assert linked(a, b)
        await b.send(a.node.device_id, "app.t", b"still here")
        for _ in range(200):
            if await inbox_texts(a) == [b"still here"]:
                break
            await asyncio.sleep(0.02)
        assert await inbox_texts(a) == [b"still here"]
        for svc in (b, a):
            await stop_service(svc)

    asyncio.run(main())


def test_another_minds_device_cannot_link(tmp_path: Path) -> None:
    async def main() -> None:
        a = await start_service(init_node(tmp_path / "a"))
        stranger = await start_service(init_node(tmp_path / "x", "stranger"), seed=9)
        from kiana.errors import MeshError

        with pytest.raises(MeshError):
            await stranger.connect("127.0.0.1", a.port, timeout_s=3)
        assert not any(p.link for p in a.peers.values())
        for svc in (stranger, a):
            await stop_service(svc)

    asyncio.run(main())


def test_queued_messages_survive_restarts_exactly_once(tmp_path: Path) -> None:
    async def main() -> None:
        sa = init_node(tmp_path / "a")
        a = await start_service(sa)
        sb = await pair_into(a, tmp_path / "b", "b")
        b_id = next(d.device_id for d in a.directory.devices() if d.name == "b")
        sent = [await a.send(b_id, "app.t", f"m{i}".encode()) for i in range(50)]
        await stop_service(a)  # a restarts with 50 messages in its outbox, b never ran
        a = await start_service(sa, seed=7)
        b = await start_service(sb, seed=2)
        await b.add_address(f"127.0.0.1:{a.port}")
        await until(lambda: linked(a, b))
        for _ in range(500):
            got = await b.inbox(channel="app.t")
            if len(got) >= 50:
                break
            await asyncio.sleep(0.02)
        # b stops mid-stream and comes back: nothing is delivered twice.
        await stop_service(b)
        b = await start_service(sb, seed=3)
        await b.add_address(f"127.0.0.1:{a.port}")
        await until(lambda: linked(a, b))
        await asyncio.sleep(0.5)
        got = await b.inbox(channel="app.t")
        assert sorted(m.msg_id for m in got) == sorted(sent)
        assert len({m.msg_id for m in got}) == 50
        await until(lambda: not a.messenger.outbox(b_id), what="outbox drained")
        for svc in (b, a):
            await stop_service(svc)

    asyncio.run(main())


def test_mdns_addresses_follow_a_device_that_moved(tmp_path: Path) -> None:
    """mDNS reports replace the addresses mDNS reported before; manual ones stay.

    The device is no member, so nothing is dialled (and the addresses are loopback ones).
    """
    from kiana.mesh.mdns import PeerSeen

    async def main() -> None:
        a = await start_service(init_node(tmp_path / "a"))
        try:
            other = "d" * 64
            a.learn_address(other, "127.0.9.50:7475", "manual")
            a._on_discovered(PeerSeen(other, ("127.0.9.10", "127.0.9.11"), 7475, False))
            assert set(a.peers[other].addresses) == {
                "127.0.9.50:7475",
                "127.0.9.10:7475",
                "127.0.9.11:7475",
            }
            a._on_discovered(PeerSeen(other, ("127.0.9.12",), 7475, False))  # it moved
            assert a.peers[other].addresses == {
                "127.0.9.50:7475": "manual",
                "127.0.9.12:7475": "mdns",
            }
            a._on_discovered(PeerSeen(other, ("127.0.9.99",), 7475, True))  # a pairing advert
            assert "127.0.9.99:7475" not in a.peers[other].addresses
        finally:
            await stop_service(a)

    asyncio.run(main())
