"""The messages and keys of device pairing (``pairing.py``), without I/O.

This module owns what goes over the wire and how it is protected: the JSON
messages, their encoding and checks, the session keys derived from SPAKE2, the
sealed boxes, the records they carry (``JoinRequest``, ``JoinResult``), the
abort message and the errors it carries. The inviter's state machine is in
``pairing.py``, the joiner's in ``pairing_joiner.py``. Messages are compact
JSON objects::

    1 joiner → host  {"v":1,"t":"pake","nameplate":7,"msg":hex(33)}
    2 host → joiner  {"v":1,"t":"pake","msg":hex(33),"confirm":hex(32)}
    3 joiner → host  {"v":1,"t":"confirm","confirm":hex(32),"sealed":b64}
                     sealed {"device","sign_key","box_key","name","new_person"}
    4 host → joiner  {"v":1,"t":"sealed","sealed":b64}
                     sealed {"t":"welcome","genesis":str,"records":[str]}
                         or {"t":"refused","reason":str}
    either way       {"v":1,"t":"abort","error":"wrong_pairing_code"}   (see abort_message)

SPAKE2 runs with the joiner as side A (id ``kiana-joiner``) and the inviter as
side B (id ``kiana-inviter``); the password is the whole code. From the shared
key K: ``confirm_inviter = HMAC-SHA256(K, "…confirm-inviter")``, likewise for the
joiner, and one SecretBox key per direction, ``HMAC-SHA256(K, "…seal-joiner")``
and ``"…seal-inviter"``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from kiana.errors import (
    CodeExpiredError,
    KianaError,
    PairingError,
    RateLimitedError,
    WrongCodeError,
)
from kiana.identity.keys import device_id_for
from kiana.identity.membership import valid_name

__all__ = [
    "ID_INVITER",
    "ID_JOINER",
    "MAX_HANDSHAKE_BYTES",
    "MAX_RECORDS",
    "MAX_WELCOME_BYTES",
    "JoinRequest",
    "JoinResult",
    "SessionKeys",
    "abort_message",
    "clean_reason",
    "decode",
    "encode",
    "expect_state",
    "finish_spake",
    "hex_field",
    "join_request",
    "open_sealed",
    "seal",
    "spake_message",
]

ID_JOINER = b"kiana-joiner"
ID_INVITER = b"kiana-inviter"
_CONFIRM_INVITER = b"kiana:pairing:v1:confirm-inviter"
_CONFIRM_JOINER = b"kiana:pairing:v1:confirm-joiner"
_SEAL_JOINER = b"kiana:pairing:v1:seal-joiner"  # joiner → inviter
_SEAL_INVITER = b"kiana:pairing:v1:seal-inviter"  # inviter → joiner

MAX_HANDSHAKE_BYTES = 16 * 1024  # messages 1–3 and aborts
MAX_WELCOME_BYTES = 16 * 1024 * 1024  # message 4: the genesis and every membership record
MAX_RECORDS = 10_000
_SPAKE_MSG_BYTES = 33  # side byte + 32-byte group element
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """The joiner proved it knows the code and asks to be admitted."""

    device: str
    sign_key: bytes
    box_key: bytes
    name: str
    new_person: str  # a name for a new person, or "" to join as the inviter's person


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What the joiner received: verified genesis and membership records (JSON texts)."""

    genesis_json: str
    member_records: tuple[str, ...]


def abort_message(error: KianaError) -> bytes:
    """What to send the other side when a step raised ``error`` (best effort)."""
    return encode({"t": "abort", "error": error.code})


# -- wire helpers ----------------------------------------------------------------


class SessionKeys:
    __slots__ = ("confirm_inviter", "confirm_joiner", "seal_inviter", "seal_joiner")

    def __init__(self, key: bytes) -> None:
        self.confirm_inviter = _mac(key, _CONFIRM_INVITER)
        self.confirm_joiner = _mac(key, _CONFIRM_JOINER)
        self.seal_joiner = _mac(key, _SEAL_JOINER)
        self.seal_inviter = _mac(key, _SEAL_INVITER)


def _mac(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def finish_spake(spake: Any, message: bytes) -> bytes:
    try:
        key = spake.finish(message)
    except (ValueError, SPAKEError, NotOnCurve) as exc:
        raise PairingError("the other device sent an invalid key-exchange message") from exc
    return bytes(key)


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, **body}, separators=(",", ":")).encode("ascii")


def decode(
    data: bytes, kind: str, fields: set[str], *, limit: int = MAX_HANDSHAKE_BYTES
) -> dict[str, Any]:
    """Parse a message of type ``kind`` with exactly ``fields``; an abort raises its error."""
    if not isinstance(data, bytes | bytearray) or len(data) > limit:
        raise PairingError("a pairing message is missing or too large")
    try:
        msg = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:
        raise PairingError("a pairing message is not valid JSON") from exc
    if not isinstance(msg, dict) or msg.get("v") != 1 or isinstance(msg.get("v"), bool):
        raise PairingError("a pairing message has an unknown format")
    if msg.get("t") == "abort" and set(msg) == {"v", "t", "error"}:
        _raise_remote(msg["error"])
    if msg.get("t") != kind or set(msg) != {"v", "t", *fields}:
        raise PairingError(f"expected a '{kind}' pairing message")
    return msg


_REMOTE_ERRORS: dict[str, tuple[type[PairingError], str]] = {
    WrongCodeError.code: (WrongCodeError, "the code does not match; ask for a new one"),
    CodeExpiredError.code: (
        CodeExpiredError,
        "the inviting device does not know this code: it expired or was already used; "
        "ask for a new one",
    ),
    RateLimitedError.code: (RateLimitedError, "the inviting device got too many attempts; wait"),
}


def _raise_remote(code: object) -> NoReturn:
    if isinstance(code, str) and code in _REMOTE_ERRORS:
        error, message = _REMOTE_ERRORS[code]
        raise error(message)
    shown = code if isinstance(code, str) and _ERROR_CODE.match(code) else "unknown"
    raise PairingError(f"the other device stopped pairing ({shown})")


def hex_field(msg: dict[str, Any], key: str, size: int) -> bytes:
    value = msg[key]
    if not isinstance(value, str) or len(value) != 2 * size:
        raise PairingError(f"pairing field '{key}' has the wrong size")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise PairingError(f"pairing field '{key}' is not hex") from exc


def spake_message(msg: dict[str, Any], side: bytes) -> bytes:
    raw = hex_field(msg, "msg", _SPAKE_MSG_BYTES)
    if raw[:1] != side:
        raise PairingError("a key-exchange message came from the wrong side")
    return raw


def seal(key: bytes, body: dict[str, Any]) -> str:
    plain = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(bytes(SecretBox(key).encrypt(plain))).decode("ascii")


def open_sealed(key: bytes, msg: dict[str, Any]) -> dict[str, Any]:
    text = msg["sealed"]
    if not isinstance(text, str):
        raise PairingError("a sealed pairing message is not text")
    try:
        plain = SecretBox(key).decrypt(base64.b64decode(text, validate=True))
        body = json.loads(plain)
    except (binascii.Error, CryptoError, ValueError, RecursionError) as exc:
        raise PairingError("a sealed pairing message was tampered with or corrupted") from exc
    if not isinstance(body, dict):
        raise PairingError("a sealed pairing message holds no object")
    return body


def join_request(info: dict[str, Any]) -> JoinRequest:
    if set(info) != {"device", "sign_key", "box_key", "name", "new_person"} or not all(
        isinstance(v, str) for v in info.values()
    ):
        raise PairingError("the joining device sent unreadable device information")
    sign_key = hex_field(info, "sign_key", 32)
    box_key = hex_field(info, "box_key", 32)
    if device_id_for(sign_key) != info["device"]:
        raise PairingError("the joining device's id is not the fingerprint of its key")
    if not valid_name(info["name"]):
        raise PairingError("the joining device sent an invalid device name")
    if info["new_person"] and not valid_name(info["new_person"]):
        raise PairingError("the joining device sent an invalid person name")
    return JoinRequest(info["device"], sign_key, box_key, info["name"], info["new_person"])


def clean_reason(reason: str) -> str:
    text = "".join(c for c in str(reason) if c.isprintable())[:200].strip()
    return text or "no reason given"


def expect_state(state: str, wanted: str) -> None:
    if state == wanted:
        return
    if state == "failed":
        raise PairingError("this pairing attempt has already failed; start a new one")
    if state == "done":
        raise PairingError("this pairing attempt is already finished")
    raise PairingError(f"pairing step out of order (at '{state}', not '{wanted}')")
