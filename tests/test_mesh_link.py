"""The sans-I/O Link and PeerHealth: deterministic, in memory, with a virtual clock."""

from __future__ import annotations

import random

import pytest

from kiana.errors import FrameError, HandshakeError, NotMemberError, RevokedDeviceError
from kiana.identity.keys import DeviceKeys
from kiana.mesh.health import Backoff, PeerHealth, PeerState
from kiana.mesh.link import CHUNK, Link, LinkClosed, LinkData, LinkEvent, LinkHealth, LinkUp
from kiana.store.types import Device

MIND = "mind-testtesttesttesttest"


def device(keys: DeviceKeys, *, revoked: int | None = None) -> Device:
    return Device(
        keys.device_id, keys.sign_public, keys.box_public, "member", "p-aaaaaaaa", "d", 0, "{}",
        revoked,
    )  # fmt: skip


class Pair:
    """Two links wired back to back; ``pump`` moves frames until both are quiet."""

    def __init__(
        self,
        a_keys: DeviceKeys | None = None,
        b_keys: DeviceKeys | None = None,
        *,
        members: dict[str, Device] | None = None,
        mind_a: str = MIND,
        mind_b: str = MIND,
        heartbeat_ms: int = 1000,
    ) -> None:
        self.a_keys = a_keys or DeviceKeys.generate()
        self.b_keys = b_keys or DeviceKeys.generate()
        if members is None:
            members = {k.device_id: device(k) for k in (self.a_keys, self.b_keys)}
        self.members = members

        def lookup(device_id: str, record: str | None) -> Device | None:
            return self.members.get(device_id)

        self.now = 1_000_000
        self.a = Link(
            initiator=True, keys=self.a_keys, mind_id=mind_a, lookup=lookup, now=self.now,
            heartbeat_ms=heartbeat_ms,
        )  # fmt: skip
        self.b = Link(
            initiator=False, keys=self.b_keys, mind_id=mind_b, lookup=lookup, now=self.now,
            heartbeat_ms=heartbeat_ms,
        )  # fmt: skip
        self.wire: list[tuple[str, bytes]] = []  # every frame, for replay attacks

    def pump(self, steps: int = 100) -> None:
        for _ in range(steps):
            moved = False
            for src, dst, name in ((self.a, self.b, "a>b"), (self.b, self.a, "b>a")):
                for frame in src.data_to_send():
                    self.wire.append((name, frame))
                    dst.receive_frame(frame, self.now)
                    moved = True
            if not moved:
                return
        raise AssertionError("links never went quiet")

    @staticmethod
    def events(link: Link) -> list[LinkEvent]:
        out = []
        while (e := link.next_event()) is not None:
            out.append(e)
        return out


def test_handshake_authenticates_both_and_carries_data() -> None:
    p = Pair()
    p.a.start()
    p.pump()
    assert Pair.events(p.a) == [LinkUp(p.b_keys.device_id)]
    assert Pair.events(p.b) == [LinkUp(p.a_keys.device_id)]
    big = b"M" + bytes(random.Random(1).randbytes(3 * CHUNK + 17))
    p.a.send(b"M hello")
    p.a.send(big)
    p.b.send(b"A ack")
    p.pump()
    assert Pair.events(p.b) == [LinkData(b"M hello"), LinkData(big)]
    assert Pair.events(p.a) == [LinkData(b"A ack")]
    # Message 1 reveals nothing about the initiator: no device id in clear anywhere.
    assert all(p.a_keys.device_id.encode() not in f for _, f in p.wire)


def closed_error(link: Link) -> BaseException | None:
    for e in Pair.events(link):
        if isinstance(e, LinkClosed):
            return e.error
    return None


def test_unknown_device_is_refused() -> None:
    a, b = DeviceKeys.generate(), DeviceKeys.generate()
    p = Pair(a, b, members={b.device_id: device(b)})  # b does not know a
    p.a.start()
    p.pump()
    assert isinstance(closed_error(p.b), NotMemberError)
    assert p.b.state.value == "closed"
    with pytest.raises(Exception, match="not up"):
        p.b.send(b"M x")


def test_revoked_device_is_refused() -> None:
    a, b = DeviceKeys.generate(), DeviceKeys.generate()
    p = Pair(a, b, members={a.device_id: device(a, revoked=5), b.device_id: device(b)})
    p.a.start()
    p.pump()
    assert isinstance(closed_error(p.b), RevokedDeviceError)


def test_device_claiming_anothers_id_is_refused() -> None:
    a, b, victim = DeviceKeys.generate(), DeviceKeys.generate(), DeviceKeys.generate()
    # The box key registered for a is the victim's: a cannot prove that identity.
    members = {
        a.device_id: Device(
            a.device_id, a.sign_public, victim.box_public, "member", "p", "d", 0, "{}"
        ),
        b.device_id: device(b),
    }
    p = Pair(a, b, members=members)
    p.a.start()
    p.pump()
    assert isinstance(closed_error(p.b), NotMemberError)


def test_another_mind_cannot_complete_a_handshake() -> None:
    p = Pair(mind_b="mind-someoneelsesmindxxxx")
    p.a.start()
    p.pump()
    assert isinstance(closed_error(p.a), HandshakeError)
    assert p.b.state.value != "up"


def test_replayed_handshake_fails() -> None:
    p = Pair()
    p.a.start()
    p.pump()
    recorded = [f for name, f in p.wire if name == "a>b"]
    # An eavesdropper replays a's handshake messages to b in a fresh session.
    q = Pair(p.a_keys, p.b_keys)
    q.b.receive_frame(recorded[0], q.now)
    q.b.data_to_send()
    q.b.receive_frame(recorded[1], q.now)
    assert isinstance(closed_error(q.b), HandshakeError)
    assert q.b.state.value == "closed"


@pytest.mark.parametrize("mutate", ["flip", "truncate", "replay", "garbage"])
def test_tampered_transport_frames_close_the_link(mutate: str) -> None:
    p = Pair()
    p.a.start()
    p.pump()
    Pair.events(p.a), Pair.events(p.b)
    p.a.send(b"M one")
    [frame] = p.a.data_to_send()
    p.b.receive_frame(frame, p.now)
    assert Pair.events(p.b) == [LinkData(b"M one")]
    p.a.send(b"M two")
    [frame2] = p.a.data_to_send()
    bad = {
        "flip": frame2[:5] + bytes([frame2[5] ^ 1]) + frame2[6:],
        "truncate": frame2[:-3],
        "replay": frame,
        "garbage": random.Random(3).randbytes(40),
    }[mutate]
    p.b.receive_frame(bad, p.now)
    assert isinstance(closed_error(p.b), FrameError)
    p.b.receive_frame(frame2, p.now)  # closed: nothing more is accepted
    assert Pair.events(p.b) == []


def test_oversized_frame_is_refused_on_both_ends() -> None:
    p = Pair()
    p.a.max_frame = 10 * CHUNK
    p.b.max_frame = 2 * CHUNK
    p.a.start()
    p.pump()
    Pair.events(p.b)
    with pytest.raises(FrameError):
        p.b.send(b"M" + b"x" * (3 * CHUNK))
    p.a.send(b"M" + b"x" * (3 * CHUNK))
    p.pump()
    assert isinstance(closed_error(p.b), FrameError)


def test_garbage_before_handshake_and_unknown_frame_type() -> None:
    p = Pair()
    p.b.receive_frame(b"\x00" * 10, p.now)
    assert isinstance(closed_error(p.b), HandshakeError)
    q = Pair()
    q.a.start()
    q.pump()
    Pair.events(q.b)
    with pytest.raises(FrameError):
        q.a.send(b"Zunknown")


def test_handshake_times_out() -> None:
    p = Pair()
    p.a.start()
    p.a.data_to_send()  # message 1 is lost
    assert p.a.next_timer() == p.now + 5000
    p.a.tick(p.now + 5000)
    assert isinstance(closed_error(p.a), HandshakeError)


def test_heartbeats_measure_rtt_then_suspect_then_down() -> None:
    p = Pair(heartbeat_ms=1000)
    p.a.start()
    p.pump()
    Pair.events(p.a), Pair.events(p.b)
    for _ in range(3):
        p.now += 1000
        p.a.tick(p.now)
        p.b.tick(p.now)
        p.now += 7  # the network takes 7 ms each way in this test
        for frame in p.a.data_to_send():
            p.b.receive_frame(frame, p.now)
        for frame in p.b.data_to_send():
            p.now += 7
            p.a.receive_frame(frame, p.now)
    assert p.a.health.state is PeerState.UP
    assert p.a.health.rtt_ms is not None and 7 <= p.a.health.rtt_ms <= 30
    # b goes silent: a marks it suspect after 2 heartbeats, down (and closes) after 5.
    seen: list[PeerState] = []
    for _ in range(8):
        p.now += 1000
        p.a.tick(p.now)
        p.a.data_to_send()
        seen += [e.state for e in Pair.events(p.a) if isinstance(e, LinkHealth)]
    assert seen == [PeerState.SUSPECT, PeerState.DOWN]
    assert p.a.state.value == "closed"


def test_close_is_reported_to_the_peer() -> None:
    p = Pair()
    p.a.start()
    p.pump()
    Pair.events(p.a), Pair.events(p.b)
    p.a.close("bye")
    p.pump()
    [event] = Pair.events(p.b)
    assert isinstance(event, LinkClosed) and event.by_peer and event.reason == "bye"


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(random.Random(7), base_ms=250, cap_ms=30_000)
    delays = [b.next_delay() for _ in range(30)]
    assert all(25 <= d <= 30_000 for d in delays)
    assert max(delays[:3]) <= 1000 and max(delays[10:]) > 5000
    b.reset()
    assert b.next_delay() <= 250


def test_peer_health_recovers_from_suspect() -> None:
    h = PeerHealth(heartbeat_ms=100)
    h.on_up(0)
    assert h.tick(250) is PeerState.SUSPECT
    assert h.on_frame(260) is PeerState.UP
    assert h.tick(300) is None
    with pytest.raises(ValueError):
        PeerHealth(heartbeat_ms=0)
