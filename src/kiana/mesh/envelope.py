"""End-to-end message envelopes and ack frames (pure functions, no I/O).

An envelope is sealed with NaCl ``Box`` (X25519 + XSalsa20-Poly1305) from the
sender's box key to the recipient's, so a relay sees only the clear routing
header. All integers are big-endian.

::

    envelope = outer header (clear) + nonce (24) + Box ciphertext (16-byte MAC + inner)
    outer    = u8 version (1) | id (16) | u8 len | from | u8 len | to
    inner    = u8 version (1) | id (16) | u8 len | from | u8 len | to | u8 len | channel
               | u64 seq | u64 created | u64 expires | u8 flags (bit 0: ordered)
               | u32 body length | body

    ack frame = b"A" | u8 version (1) | 1..MAX_ACK_IDS message ids of 16 bytes each
    message frame = b"M" | envelope

The receiver checks that the inner id, from and to equal the outer ones (the
header is not covered by the MAC on its own), that ``to`` is itself, that the
body is within the limit and that the message has not expired. Acks travel
inside an already encrypted link and are not sealed; only their shape is checked.
Message ids are 128 random bits, written as 32 lowercase hex characters.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nacl.utils
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from kiana.errors import FrameError, MessageError
from kiana.identity.keys import DeviceKeys

VERSION = 1
MESSAGE_FRAME = b"M"
ACK_FRAME = b"A"
MAX_ACK_IDS = 1024
DEFAULT_MAX_BODY = 1 << 20
ID_BYTES = 16
NONCE_BYTES = Box.NONCE_SIZE
MAC_BYTES = 16
# Fixed inner bytes besides the names and the body: version, id, 3 lengths,
# seq/created/expires, flags, body length.
_INNER_FIXED = 1 + ID_BYTES + 3 + 8 * 3 + 1 + 4
_MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")
_CHANNEL = re.compile(r"[A-Za-z0-9._:/-]{1,64}\Z")
_HEX_ID = re.compile(r"[0-9a-f]{32}\Z")
_U64 = struct.Struct(">QQQBI")  # seq, created, expires, flags, body length
_MAX_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """The sealed content of a message, as the recipient sees it after opening."""

    msg_id: str
    sender: str
    recipient: str
    channel: str
    seq: int
    created: int
    expires: int
    ordered: bool
    body: bytes


def max_envelope_bytes(max_body: int) -> int:
    """The largest envelope a receiver with ``max_body`` may have to open."""
    return (
        2 * (1 + ID_BYTES + 2 + 2 * _MAX_NAME) + NONCE_BYTES + MAC_BYTES + _INNER_FIXED + max_body
    )


def check_name(value: str, what: str) -> None:
    if not _NAME.match(value):
        raise MessageError(f"invalid {what} id (1-64 characters of A-Z a-z 0-9 . _ : -)")


def check_channel(value: str) -> None:
    if not _CHANNEL.match(value):
        raise MessageError("invalid channel name (1-64 characters of A-Z a-z 0-9 . _ : / -)")


def _id_bytes(msg_id: str) -> bytes:
    if not _HEX_ID.match(msg_id):
        raise MessageError("message id must be 32 lowercase hex characters")
    return bytes.fromhex(msg_id)


def _header(msg_id: str, sender: str, recipient: str) -> bytes:
    s, r = sender.encode("ascii"), recipient.encode("ascii")
    return bytes([VERSION]) + _id_bytes(msg_id) + bytes([len(s)]) + s + bytes([len(r)]) + r


def seal(
    env: Envelope,
    sender_box: PrivateKey,
    recipient_box_key: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Encode and seal ``env``; the nonce comes from the OS CSPRNG unless given (tests)."""
    check_name(env.sender, "sender")
    check_name(env.recipient, "recipient")
    check_channel(env.channel)
    for value in (env.seq, env.created, env.expires):
        if not 0 <= value <= _MAX_U64:
            raise MessageError("seq, created and expires must fit in 64 unsigned bits")
    header = _header(env.msg_id, env.sender, env.recipient)
    channel = env.channel.encode("ascii")
    inner = (
        header
        + bytes([len(channel)])
        + channel
        + _U64.pack(env.seq, env.created, env.expires, int(env.ordered), len(env.body))
        + env.body
    )
    nonce = nacl.utils.random(NONCE_BYTES) if nonce is None else nonce
    try:
        box = Box(sender_box, PublicKey(recipient_box_key))
    except (CryptoError, TypeError, ValueError) as exc:
        raise MessageError("invalid recipient box key") from exc
    sealed = box.encrypt(inner, nonce)
    return header + bytes(sealed)  # EncryptedMessage = nonce + ciphertext


class _Reader:
    """Bounds-checked reads over bytes; any overrun is a MessageError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MessageError("truncated envelope")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def name(self, what: str) -> str:
        n = self.take(1)[0]
        raw = self.take(n)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MessageError(f"invalid {what} id") from exc
        if what == "channel":
            check_channel(text)
        else:
            check_name(text, what)
        return text

    def header(self) -> tuple[str, str, str]:
        if self.take(1)[0] != VERSION:
            raise MessageError("unknown envelope version")
        msg_id = self.take(ID_BYTES).hex()
        return msg_id, self.name("sender"), self.name("recipient")


def peek_route(data: bytes) -> tuple[str, str, str]:
    """``(msg_id, sender, recipient)`` from the clear header, without decrypting.

    A relay uses this to forward; nothing here is authenticated.
    """
    reader = _Reader(data)
    route = reader.header()
    if len(data) - reader.pos < NONCE_BYTES + MAC_BYTES + _INNER_FIXED:
        raise MessageError("truncated envelope")
    return route


def open_envelope(
    data: bytes,
    my_keys: DeviceKeys,
    box_key_lookup: Callable[[str], bytes | None],
    *,
    now: int,
    max_body: int = DEFAULT_MAX_BODY,
) -> Envelope:
    """Check and open an envelope addressed to ``my_keys``; MessageError on any fault."""
    if len(data) > max_envelope_bytes(max_body):
        raise MessageError("envelope larger than the message size limit")
    reader = _Reader(data)
    msg_id, sender, recipient = reader.header()
    if recipient != my_keys.device_id:
        raise MessageError("envelope is not addressed to this device")
    sender_key = box_key_lookup(sender)
    if sender_key is None:
        raise MessageError("envelope from an unknown sender")
    try:
        box = Box(my_keys.box, PublicKey(sender_key))
        inner = box.decrypt(data[reader.pos :])
    except (CryptoError, TypeError, ValueError) as exc:
        raise MessageError("envelope failed decryption (tampered or forged)") from exc
    env = _decode_inner(inner)
    if (env.msg_id, env.sender, env.recipient) != (msg_id, sender, recipient):
        raise MessageError("envelope header does not match its sealed content")
    if len(env.body) > max_body:
        raise MessageError("message body larger than the size limit")
    if env.expires <= now:
        raise MessageError("message expired")
    return env


def _decode_inner(inner: bytes) -> Envelope:
    reader = _Reader(inner)
    msg_id, sender, recipient = reader.header()
    channel = reader.name("channel")
    seq, created, expires, flags, body_len = _U64.unpack(reader.take(_U64.size))
    if flags not in (0, 1):
        raise MessageError("unknown envelope flags")
    ordered = flags == 1
    if ordered != (seq > 0):
        raise MessageError("ordered messages need a sequence number >= 1, others 0")
    if created > expires:
        raise MessageError("message expires before it was created")
    body = reader.take(body_len)
    if reader.pos != len(inner):
        raise MessageError("trailing bytes after the message body")
    return Envelope(msg_id, sender, recipient, channel, seq, created, expires, ordered, body)


def encode_ack(msg_ids: Sequence[str]) -> bytes:
    """An ack frame (``b"A"`` first) for 1..MAX_ACK_IDS message ids."""
    if not 1 <= len(msg_ids) <= MAX_ACK_IDS:
        raise FrameError(f"an ack carries 1 to {MAX_ACK_IDS} message ids")
    return ACK_FRAME + bytes([VERSION]) + b"".join(_id_bytes(m) for m in msg_ids)


def decode_ack(frame: bytes) -> list[str]:
    """Message ids of an ack frame (with its ``b"A"``); FrameError if malformed."""
    if frame[:1] != ACK_FRAME or len(frame) < 2 or frame[1] != VERSION:
        raise FrameError("not an ack frame of a known version")
    ids = frame[2:]
    n, rest = divmod(len(ids), ID_BYTES)
    if rest or not 1 <= n <= MAX_ACK_IDS:
        raise FrameError("malformed ack frame")
    return [ids[i * ID_BYTES : (i + 1) * ID_BYTES].hex() for i in range(n)]
