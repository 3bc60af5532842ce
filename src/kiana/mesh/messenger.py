"""End-to-end messaging, sans-I/O: outbox with retries, inbox with dedup and ordering.

``Messenger`` takes frames and the current time in milliseconds and returns
frames to send and typed events; it owns no socket, task or clock, and draws its
randomness (message ids, retry jitter) from the ``random.Random`` it is given
(the crypto nonces come from the OS). State that must survive a crash lives in
the ``MessageStore``; what lives here (reachable peers, acks not yet sent,
events not yet taken) is rebuilt by the caller or made good by the sender's
retries.

Frames (the payload of a link frame): ``b"M" + envelope`` and ``b"A" + ack``,
see ``kiana.mesh.envelope``. The caller:

* ``send()`` queues durably; ``peer_up()`` / ``peer_down()`` track links;
* feeds every ``M``/``A`` frame from a peer to ``receive()`` and handles the
  events it returns;
* calls ``poll(now)`` at ``next_wakeup()`` (and after ``send``/``receive``),
  sends the frames it returns, and handles ``take_events()`` (expiries, and
  ordered messages released by a gap timeout);
* hands received messages to the application and ``consume()``s them; after a
  restart ``inbox()`` lists those not yet consumed (events are not durable).

Receiving: the message and its dedup record are stored in one transaction and
only then acknowledged; a duplicate is acknowledged again but not delivered.
Ordered channels hold a message until its predecessors are delivered; held
messages are stored (and acked), so after a restart they are still held and are
released by the predecessor's arrival, or when their own expiry passes (see
``kiana.mesh.message_store``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kiana.errors import FrameError, MessageError
from kiana.identity.keys import DeviceKeys
from kiana.mesh.envelope import (
    ACK_FRAME,
    MAX_ACK_IDS,
    MESSAGE_FRAME,
    Envelope,
    check_channel,
    check_name,
    decode_ack,
    encode_ack,
    open_envelope,
    seal,
)
from kiana.mesh.message_store import Delivered, MessageStore, OutboxEntry

__all__ = [
    "Delivered",
    "MessageAcked",
    "MessageExpired",
    "MessageReceived",
    "MessageRejected",
    "Messenger",
    "MessengerEvent",
]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    msg_id: str
    sender: str
    channel: str
    seq: int
    body: bytes
    created: int


@dataclass(frozen=True, slots=True)
class MessageAcked:
    msg_id: str
    peer: str


@dataclass(frozen=True, slots=True)
class MessageExpired:
    """The message reached its TTL before ``peer`` acknowledged it; it was dropped."""

    msg_id: str
    peer: str


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A frame from ``peer`` was refused (garbage, tampered, forged, expired, ...)."""

    peer: str
    reason: str


MessengerEvent = MessageReceived | MessageAcked | MessageExpired | MessageRejected


def _received(d: Delivered) -> MessageReceived:
    return MessageReceived(d.msg_id, d.sender, d.channel, d.seq, d.body, d.created)


class Messenger:
    def __init__(
        self,
        *,
        keys: DeviceKeys,
        box_keys: Callable[[str], bytes | None],
        store: MessageStore,
        rng: random.Random,
        max_body: int = 1 << 20,
        default_ttl_ms: int = 7 * 24 * 3600 * 1000,
        retry_base_ms: int = 500,
        retry_cap_ms: int = 30_000,
        batch: int = 256,
        prune_interval_ms: int = 60_000,
    ) -> None:
        if retry_base_ms < 1 or retry_cap_ms < retry_base_ms:
            raise ValueError("need 1 <= retry_base_ms <= retry_cap_ms")
        self.keys = keys
        self.device_id = keys.device_id
        self.max_body = max_body
        self.default_ttl_ms = default_ttl_ms
        self.retry_base_ms = retry_base_ms
        self.retry_cap_ms = retry_cap_ms
        self.batch = batch
        self.prune_interval_ms = prune_interval_ms
        self._box_keys = box_keys
        self._store = store
        self._rng = rng
        self._up: set[str] = set()
        self._acks: dict[str, dict[str, None]] = {}  # peer -> msg ids, insertion-ordered
        self._acks_since: int | None = None
        self._events: list[MessengerEvent] = []
        self._next_prune: int | None = None

    # -- sending -------------------------------------------------------------------------------

    def send(
        self,
        to: str,
        channel: str,
        body: bytes,
        *,
        now: int,
        ttl_ms: int | None = None,
        ordered: bool = False,
    ) -> str:
        """Queue ``body`` for ``to``; durable in the outbox when this returns the message id."""
        check_name(to, "recipient")
        check_channel(channel)
        if to == self.device_id:
            raise MessageError("cannot send a message to this device itself")
        if len(body) > self.max_body:
            raise MessageError(
                f"message body of {len(body)} bytes is over the limit of {self.max_body} bytes"
            )
        ttl = self.default_ttl_ms if ttl_ms is None else ttl_ms
        if ttl <= 0:
            raise MessageError("a message needs a positive time to live")
        recipient_key = self._box_keys(to)
        if recipient_key is None:
            raise MessageError(f"unknown recipient device {to}")
        msg_id = f"{self._rng.getrandbits(128):032x}"

        def sealer(seq: int, expires: int) -> bytes:
            env = Envelope(msg_id, self.device_id, to, channel, seq, now, expires, ordered, body)
            return seal(env, self.keys.box, recipient_key)

        self._store.add_outgoing(
            msg_id, to, channel, ordered=ordered, created=now, expires=now + ttl, seal=sealer
        )
        return msg_id

    def peer_up(self, peer: str, now: int) -> None:
        """``peer`` is reachable: everything queued for it is due now."""
        self._up.add(peer)
        self._store.reschedule(peer, now)

    def peer_down(self, peer: str) -> None:
        self._up.discard(peer)

    def outbox(self, peer: str | None = None) -> list[OutboxEntry]:
        return self._store.outbox(peer)

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, peer: str, frame: bytes, now: int) -> list[MessengerEvent]:
        """Handle a ``b"M"`` or ``b"A"`` frame from the link with ``peer``; never raises on bad input.

        Store failures (``StoreError``) do propagate: nothing was acknowledged then.
        """
        kind = frame[:1]
        if kind == MESSAGE_FRAME:
            return self._on_message(peer, frame[1:], now)
        if kind == ACK_FRAME:
            try:
                ids = decode_ack(frame)
            except FrameError as exc:
                return [MessageRejected(peer, exc.message)]
            return [MessageAcked(m, peer) for m in self._store.remove_acked(peer, ids)]
        return [MessageRejected(peer, "unknown message frame type")]

    def _on_message(self, peer: str, data: bytes, now: int) -> list[MessengerEvent]:
        try:
            env = open_envelope(data, self.keys, self._box_keys, now=now, max_body=self.max_body)
        except MessageError as exc:
            return [MessageRejected(peer, exc.message)]
        result = self._store.deliver(env, now)
        if result.status == "stale":
            return [MessageRejected(peer, "ordered message older than one already delivered")]
        if result.status == "conflict":
            return [MessageRejected(peer, "message id already used by another sender")]
        self._acks.setdefault(env.sender, {})[env.msg_id] = None
        if self._acks_since is None:
            self._acks_since = now
        return [_received(d) for d in result.delivered]

    # -- timers --------------------------------------------------------------------------------

    def poll(self, now: int) -> list[tuple[str, bytes]]:
        """``(peer, frame)`` pairs to send now; timer events go to ``take_events()``."""
        self._events.extend(MessageExpired(m, p) for m, p in self._store.expire_outgoing(now))
        release = self._store.next_release()
        if release is not None and release <= now:
            self._events.extend(_received(d) for d in self._store.release_gaps(now))
        if self._next_prune is None or now >= self._next_prune:
            self._store.prune_seen(now)
            self._next_prune = now + self.prune_interval_ms
        frames: list[tuple[str, bytes]] = []
        for peer, pending in self._acks.items():
            ids = list(pending)
            for i in range(0, len(ids), MAX_ACK_IDS):
                frames.append((peer, encode_ack(ids[i : i + MAX_ACK_IDS])))
        self._acks.clear()
        self._acks_since = None
        tries: list[tuple[str, int]] = []
        for entry in self._store.due(self._up, now, self.batch):
            frames.append((entry.peer, MESSAGE_FRAME + entry.envelope))
            tries.append((entry.msg_id, now + self._backoff(entry.attempts + 1)))
        self._store.record_attempts(tries)
        return frames

    def _backoff(self, attempt: int) -> int:
        """Equal jitter: uniform in [c/2, c] ms, c = min(cap, base * 2**(attempt-1)).

        Not full jitter: a retry must never come almost at once, or a message still
        on its way (a large one, a busy receiver) is sent twice; half the ceiling
        still spreads retries of many messages apart.
        """
        ceiling = min(self.retry_cap_ms, self.retry_base_ms << min(attempt - 1, 40))
        return max(1, round(ceiling / 2 + self._rng.random() * ceiling / 2))

    def next_wakeup(self) -> int | None:
        """The earliest time ``poll()`` has something to do (may be in the past), or None."""
        times = [
            t
            for t in (
                self._acks_since,
                self._store.next_outgoing(self._up),
                self._store.next_release(),
            )
            if t is not None
        ]
        return min(times) if times else None

    def take_events(self) -> list[MessengerEvent]:
        """Events produced by ``poll()``: ``MessageExpired`` and gap-released ``MessageReceived``."""
        events, self._events = self._events, []
        return events

    # -- the application's side ----------------------------------------------------------------

    def inbox(self, limit: int = 100) -> list[Delivered]:
        """Delivered messages not yet consumed, in delivery order (channel order kept)."""
        return self._store.pending_inbox(limit)

    def consume(self, msg_id: str) -> None:
        self._store.consume(msg_id)
