"""WebRTC signalling frames: sealed from one device to another, forwarded by any peer.

``S`` ‖ 2-byte header length ‖ JSON ``{"id", "from", "to"}`` ‖ NaCl Box(sender → recipient)
of the SDP (or other signal) body. A forwarding peer reads only the header; the
recipient checks that the sealed body names the same id, sender and recipient.
"""

from __future__ import annotations

import json
import secrets

from nacl.exceptions import CryptoError
from nacl.public import Box, PublicKey

from kiana.errors import FrameError
from kiana.identity.keys import DeviceKeys

SIGNAL_FRAME = b"S"
MAX_SIGNAL = 64 * 1024


def encode_signal(keys: DeviceKeys, box_key: bytes, sender: str, to: str, body: bytes) -> bytes:
    # Random from the OS, never from a seeded generator: forwarders drop repeated ids.
    signal_id = secrets.token_hex(12)
    header = json.dumps({"id": signal_id, "from": sender, "to": to}).encode()
    sealed = Box(keys.box, PublicKey(box_key)).encrypt(header + b"\n" + body)
    if len(sealed) > MAX_SIGNAL:
        raise FrameError("a signal is too large")
    return SIGNAL_FRAME + len(header).to_bytes(2, "big") + header + bytes(sealed)


def peek_signal(frame: bytes) -> tuple[str, str, str]:
    """(signal id, sender, recipient) from the clear header."""
    if frame[:1] != SIGNAL_FRAME or len(frame) < 3 or len(frame) > MAX_SIGNAL + 1024:
        raise FrameError("not a signal frame")
    size = int.from_bytes(frame[1:3], "big")
    try:
        head = json.loads(frame[3 : 3 + size])
        values = (head["id"], head["from"], head["to"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FrameError("a signal has an unreadable header") from exc
    if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in values):
        raise FrameError("a signal has an invalid header")
    return values[0], values[1], values[2]


def open_signal(keys: DeviceKeys, sender_box_key: bytes, frame: bytes) -> bytes:
    size = int.from_bytes(frame[1:3], "big")
    header = frame[3 : 3 + size]
    try:
        plain = Box(keys.box, PublicKey(sender_box_key)).decrypt(frame[3 + size :])
    except (CryptoError, ValueError) as exc:
        raise FrameError("a signal failed decryption (forged or tampered)") from exc
    inner, _, body = plain.partition(b"\n")
    if inner != header:
        raise FrameError("a signal's sealed header differs from its clear header")
    return body
