"""One authenticated, encrypted link to another device of the mind (sans-I/O).

A ``Link`` consumes carrier frames (whole, length-delimited byte strings from TCP
or a WebRTC data channel) and the time, and produces frames to send, typed events
and its next timer. The asyncio shell moves the bytes.

Handshake: Noise XX (``noise.py``) with the prologue ``kiana-mesh-v1\\0`` + mind id.
Message 2 (responder) and 3 (initiator) carry ``{"v":1,"device":…,"mind":…}``,
encrypted by Noise. Each side accepts the other only if that device is an active
member of the mind whose X25519 box key equals the static key Noise authenticated.

After the handshake every record is ``encrypt(flag ‖ chunk)``: flag 0 = more chunks
follow, 1 = last chunk. Reassembled, a frame is one type byte and a payload:
``P`` ping (8-byte send time), ``O`` pong (echo), ``M``/``A`` messenger frames
(passed up as ``LinkData``), ``C`` close (UTF-8 reason).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from kiana.errors import (
    FrameError,
    HandshakeError,
    KianaError,
    MeshError,
    NotMemberError,
    RevokedDeviceError,
)
from kiana.identity.keys import DeviceKeys
from kiana.mesh.health import PeerHealth, PeerState
from kiana.mesh.noise import CipherState, NoiseXX
from kiana.store.types import Device

PROLOGUE = b"kiana-mesh-v1\x00"
CHUNK = 60_000  # plaintext per Noise record; Noise caps a message at 65,535 bytes
MAX_FRAME_DEFAULT = (1 << 20) + 65_536

PING = b"P"
PONG = b"O"
CLOSE = b"C"
DATA_TYPES = frozenset({b"M", b"A", b"S"})  # messages, acks, WebRTC signals

# (device id, the membership record it presented or None) -> the member, or None if unknown.
MemberLookup = Callable[[str, str | None], Device | None]


class LinkState(StrEnum):
    HANDSHAKE = "handshake"
    UP = "up"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer: str


@dataclass(frozen=True, slots=True)
class LinkData:
    payload: bytes  # a messenger frame (b"M…", b"A…") or a WebRTC signal (b"S…")


@dataclass(frozen=True, slots=True)
class LinkHealth:
    state: PeerState
    rtt_ms: float | None


@dataclass(frozen=True, slots=True)
class LinkClosed:
    reason: str
    error: KianaError | None = None
    by_peer: bool = False


LinkEvent = LinkUp | LinkData | LinkHealth | LinkClosed


class Link:
    def __init__(
        self,
        *,
        initiator: bool,
        keys: DeviceKeys,
        mind_id: str,
        lookup: MemberLookup,
        now: int,
        heartbeat_ms: int = 2000,
        max_frame: int = MAX_FRAME_DEFAULT,
        expect: str | None = None,
        handshake_timeout_ms: int = 5000,
        ephemeral_private: bytes | None = None,
        record: str | None = None,
    ) -> None:
        self.initiator = initiator
        self.keys = keys
        self.mind_id = mind_id
        self.lookup = lookup
        self.max_frame = max_frame
        self.expect = expect
        self.record = record
        self.state = LinkState.HANDSHAKE
        self.peer: str | None = None
        self.health = PeerHealth(heartbeat_ms=heartbeat_ms)
        self.created = now
        self.bytes_in = 0
        self.bytes_out = 0
        self._deadline = now + handshake_timeout_ms
        self._noise = NoiseXX(
            initiator=initiator,
            static_private=bytes(keys.box),
            prologue=PROLOGUE + mind_id.encode(),
            ephemeral_private=ephemeral_private,
        )
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._out: list[bytes] = []
        self._events: deque[LinkEvent] = deque()
        self._partial = bytearray()
        self._started = False
        self._confirmed = True

    # -- handshake ---------------------------------------------------------------

    def start(self) -> None:
        """The initiator sends Noise message 1 (it reveals nothing about the device)."""
        if self.initiator and not self._started:
            self._started = True
            self._emit_raw(self._noise.write_message(b""))

    def _identity(self) -> bytes:
        claim: dict[str, object] = {"v": 1, "device": self.keys.device_id, "mind": self.mind_id}
        if self.record:
            # Our membership record, so a peer that has not heard of us yet can admit us.
            claim["record"] = self.record
        return json.dumps(claim).encode()

    def _check_peer(self, payload: bytes) -> str:
        try:
            claim = json.loads(payload)
            device = claim["device"]
            mind = claim["mind"]
            record = claim.get("record")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HandshakeError("the peer sent an unreadable identity") from exc
        if not isinstance(record, str | None):
            raise HandshakeError("the peer sent an unreadable membership record")
        if not isinstance(device, str) or mind != self.mind_id:
            raise NotMemberError("the peer belongs to another mind")
        if device == self.keys.device_id:
            raise HandshakeError("the peer claims to be this device")
        member = self.lookup(device, record)
        if member is None or member.box_key != self._noise.remote_static:
            raise NotMemberError(f"device {device} is not a member of this mind")
        if not member.active:
            raise RevokedDeviceError(f"device {device} was revoked")
        if self.expect is not None and device != self.expect:
            raise HandshakeError(f"expected device {self.expect}, reached {device}")
        return device

    def _handshake_frame(self, frame: bytes, now: int) -> None:
        payload = self._noise.read_message(frame)
        if self.initiator:
            # Message 2 read: learn and check the responder, then send message 3.
            self.peer = self._check_peer(payload)
            self._emit_raw(self._noise.write_message(self._identity()))
            self._established(now)
        elif self._noise.remote_static is None:
            # Message 1 read: answer with message 2.
            self._emit_raw(self._noise.write_message(self._identity()))
        else:
            self.peer = self._check_peer(payload)
            self._established(now)

    def _established(self, now: int) -> None:
        self._send, self._recv = self._noise.split()
        self.state = LinkState.UP
        self.health.on_up(now)
        assert self.peer is not None
        if self.initiator:
            # The responder may still refuse message 3 (e.g. it knows we were revoked): the
            # link counts as up only once its first encrypted frame proves it accepted us.
            self._confirmed = False
        else:
            self._events.append(LinkUp(self.peer))
            self._send_frame(PING + now.to_bytes(8, "big"))  # the initiator's confirmation

    # -- input -------------------------------------------------------------------

    def receive_frame(self, frame: bytes, now: int) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.bytes_in += len(frame)
        try:
            if self.state is LinkState.HANDSHAKE:
                self._handshake_frame(frame, now)
            else:
                self._record(frame, now)
        except MeshError as exc:
            self._fail(exc)

    def _record(self, frame: bytes, now: int) -> None:
        assert self._recv is not None
        plain = self._recv.decrypt_with_ad(b"", frame)
        if not self._confirmed:
            self._confirmed = True
            assert self.peer is not None
            self._events.append(LinkUp(self.peer))
        if not plain or plain[0] not in (0, 1):
            raise FrameError("a link record has an invalid header")
        self._partial += plain[1:]
        if len(self._partial) > self.max_frame:
            raise FrameError(f"a frame exceeds the limit of {self.max_frame} bytes")
        if plain[0] == 0:
            return
        whole = bytes(self._partial)
        self._partial.clear()
        changed = self.health.on_frame(now)
        if changed is not None:
            self._events.append(LinkHealth(changed, self.health.rtt_ms))
        self._dispatch(whole, now)

    def _dispatch(self, frame: bytes, now: int) -> None:
        kind, payload = frame[:1], frame[1:]
        if kind == PING:
            if len(payload) != 8:
                raise FrameError("a ping has the wrong length")
            self._send_frame(PONG + payload)
        elif kind == PONG:
            if len(payload) != 8:
                raise FrameError("a pong has the wrong length")
            self.health.on_pong(int.from_bytes(payload, "big"), now)
        elif kind in DATA_TYPES:
            self._events.append(LinkData(frame))
        elif kind == CLOSE:
            reason = payload.decode("utf-8", "replace")[:200]
            self.state = LinkState.CLOSED
            self.health.mark_down()
            self._events.append(LinkClosed(reason or "closed by peer", None, by_peer=True))
        else:
            raise FrameError(f"unknown frame type {kind!r}")

    # -- output ------------------------------------------------------------------

    @property
    def confirmed(self) -> bool:
        """Up, and (for the initiator) accepted by the peer."""
        return self.state is LinkState.UP and self._confirmed

    def send(self, payload: bytes) -> None:
        """Queue a messenger frame (``M…``/``A…``/``S…``) for the peer."""
        if self.state is not LinkState.UP:
            raise MeshError("the link is not up")
        if payload[:1] not in DATA_TYPES:
            raise FrameError("only messenger frames can be sent on a link")
        if len(payload) > self.max_frame:
            raise FrameError(f"a frame exceeds the limit of {self.max_frame} bytes")
        self._send_frame(payload)

    def _send_frame(self, frame: bytes) -> None:
        assert self._send is not None
        view = memoryview(frame)
        for start in range(0, max(1, len(frame)), CHUNK):
            last = start + CHUNK >= len(frame)
            record = bytes((1 if last else 0,)) + bytes(view[start : start + CHUNK])
            self._emit_raw(self._send.encrypt_with_ad(b"", record))

    def _emit_raw(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._out.append(data)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> LinkEvent | None:
        return self._events.popleft() if self._events else None

    # -- time --------------------------------------------------------------------

    def tick(self, now: int) -> None:
        if self.state is LinkState.CLOSED:
            return
        if self.state is LinkState.HANDSHAKE:
            if now >= self._deadline:
                self._fail(HandshakeError("the handshake did not complete in time"))
            return
        changed = self.health.tick(now)
        if changed is PeerState.DOWN:
            self._events.append(LinkHealth(changed, self.health.rtt_ms))
            self.close("peer stopped answering heartbeats")
            return
        if changed is not None:
            self._events.append(LinkHealth(changed, self.health.rtt_ms))
        if self.health.ping_due(now):
            self._send_frame(PING + now.to_bytes(8, "big"))

    def next_timer(self) -> int | None:
        if self.state is LinkState.HANDSHAKE:
            return self._deadline
        if self.state is LinkState.CLOSED:
            return None
        return self.health.next_timer()

    # -- closing -----------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        if self.state is LinkState.CLOSED:
            return
        if self.state is LinkState.UP:
            self._send_frame(CLOSE + reason.encode()[:200])
        self.state = LinkState.CLOSED
        self.health.mark_down()
        self._events.append(LinkClosed(reason))

    def _fail(self, error: MeshError) -> None:
        self.state = LinkState.CLOSED
        self.health.mark_down()
        self._partial.clear()
        self._events.append(LinkClosed(error.message, error))
