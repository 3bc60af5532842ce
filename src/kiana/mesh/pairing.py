"""Pairing a new device with a one-time code (SPAKE2), without I/O.

The inviter runs a ``PairingHost`` that hands out codes (``invite``) and a
``HostSession`` per incoming attempt (``accept``); the new device runs a
``JoinerSession``. Every step takes the received bytes (and on the host the
time in ms) and returns the bytes to send or a typed event; the shell moves the
bytes (docs/mesh.md, "Pairing (SPAKE2)"). Messages are compact JSON objects::

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

One guess per code: ``accept`` takes the code out of the open invitations
before any key is computed, so whatever happens next (success, a wrong
confirmation, a dropped connection) the code cannot be tried again. At most
five attempts per rolling minute are accepted across all codes.

Anything malformed raises ``PairingError`` (or a subclass); nothing here writes
to a store: the application admits the device after the ``JoinRequest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from kiana.errors import (
    CodeExpiredError,
    InputError,
    KianaError,
    PairingError,
    RateLimitedError,
    WrongCodeError,
)
from kiana.identity.keys import DeviceKeys, device_id_for
from kiana.identity.membership import parse_membership, replay_membership, valid_name
from kiana.identity.mind import parse_genesis
from kiana.mesh.codes import MAX_NAMEPLATE, PairingCode, new_code

ID_JOINER = b"kiana-joiner"
ID_INVITER = b"kiana-inviter"
_CONFIRM_INVITER = b"kiana:pairing:v1:confirm-inviter"
_CONFIRM_JOINER = b"kiana:pairing:v1:confirm-joiner"
_SEAL_JOINER = b"kiana:pairing:v1:seal-joiner"  # joiner → inviter
_SEAL_INVITER = b"kiana:pairing:v1:seal-inviter"  # inviter → joiner

MAX_HANDSHAKE_BYTES = 16 * 1024  # messages 1–3 and aborts
MAX_WELCOME_BYTES = 16 * 1024 * 1024  # message 4: the genesis and every membership record
MAX_RECORDS = 10_000
ATTEMPTS_PER_MINUTE = 5
ATTEMPT_WINDOW_MS = 60_000
SESSION_TIMEOUT_MS = 120_000  # from accept to the joiner's confirmation
MAX_OPEN_INVITATIONS = 100
_SPAKE_MSG_BYTES = 33  # side byte + 32-byte group element
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


# -- events and results ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invitation:
    code: PairingCode
    expires: int  # ms


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


# -- the inviter -----------------------------------------------------------------


class PairingHost:
    """Open invitations and the attempt rate limit of one inviting device."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        attempts_per_minute: int = ATTEMPTS_PER_MINUTE,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
    ) -> None:
        self._rng = rng
        self._limit = attempts_per_minute
        self._session_timeout = session_timeout_ms
        self._open: dict[int, Invitation] = {}
        self._attempts: deque[int] = deque()

    def invite(self, ttl_ms: int, now: int) -> PairingCode:
        """A new one-time code, valid for ``ttl_ms``; its nameplate is unique among open ones."""
        if ttl_ms <= 0:
            raise InputError("a pairing code needs a positive lifetime")
        self._expire(now)
        if len(self._open) >= MAX_OPEN_INVITATIONS:
            raise PairingError(
                f"{MAX_OPEN_INVITATIONS} pairing codes are already open; cancel some first"
            )
        while True:
            code = new_code(self._rng)
            if code.nameplate not in self._open:
                break
        self._open[code.nameplate] = Invitation(code, now + ttl_ms)
        return code

    def cancel(self, nameplate: int) -> bool:
        return self._open.pop(nameplate, None) is not None

    def open_invitations(self, now: int) -> list[Invitation]:
        self._expire(now)
        return sorted(self._open.values(), key=lambda i: i.expires)

    def next_expiry(self) -> int | None:
        """When the next open code expires (a timer for the shell), or None."""
        return min((i.expires for i in self._open.values()), default=None)

    def accept(self, first_message: bytes, now: int) -> tuple[HostSession, bytes]:
        """Start a session for message 1; returns it and message 2.

        Raises ``RateLimitedError`` (the 6th attempt in a minute), ``CodeExpiredError``
        (no such open code: expired, used, cancelled or never issued) or ``PairingError``.
        The code is burnt as soon as it is named, whatever happens next. Every call
        counts towards the rate limit (garbage too), except those the limit refuses.
        """
        self._check_rate(now)
        msg = _decode(first_message, "pake", {"nameplate", "msg"})
        nameplate = msg["nameplate"]
        if not isinstance(nameplate, int) or isinstance(nameplate, bool):
            raise PairingError("a pairing message names no code number")
        if not 1 <= nameplate <= MAX_NAMEPLATE:
            raise PairingError("a pairing message names an impossible code number")
        spake_a = _spake_message(msg, b"A")
        self._expire(now)
        invitation = self._open.pop(nameplate, None)
        if invitation is None:
            raise CodeExpiredError(
                f"no open pairing code {nameplate}: it expired, was already used or was "
                "never issued; make a new one"
            )
        spake = SPAKE2_B(invitation.code.password, idA=ID_JOINER, idB=ID_INVITER)
        spake_b = spake.start()
        keys = _SessionKeys(_finish(spake, spake_a))
        session = HostSession(nameplate, keys, deadline=now + self._session_timeout)
        reply = _encode({"t": "pake", "msg": spake_b.hex(), "confirm": keys.confirm_inviter.hex()})
        return session, reply

    def _check_rate(self, now: int) -> None:
        while self._attempts and self._attempts[0] <= now - ATTEMPT_WINDOW_MS:
            self._attempts.popleft()
        if len(self._attempts) >= self._limit:
            wait = max(1, math.ceil((self._attempts[0] + ATTEMPT_WINDOW_MS - now) / 1000))
            raise RateLimitedError(f"too many pairing attempts; try again in {wait} s")
        self._attempts.append(now)

    def _expire(self, now: int) -> None:
        for plate in [p for p, i in self._open.items() if i.expires <= now]:
            del self._open[plate]


class HostSession:
    """The inviter's side of one pairing attempt (after message 1)."""

    def __init__(self, nameplate: int, keys: _SessionKeys, *, deadline: int) -> None:
        self.nameplate = nameplate
        self.deadline = deadline
        self.request: JoinRequest | None = None
        self._keys = keys
        self._state = "confirm"  # confirm -> decide -> done; or failed

    @property
    def state(self) -> str:
        return self._state

    def receive(self, data: bytes, now: int) -> JoinRequest:
        """Message 3 (or an abort): check the joiner's confirmation, open its info."""
        _expect_state(self._state, "confirm")
        try:
            if now > self.deadline:
                raise PairingError("the joining device took too long; make a new code")
            msg = _decode(data, "confirm", {"confirm", "sealed"})
            confirm = _hex_field(msg, "confirm", 32)
            if not hmac.compare_digest(confirm, self._keys.confirm_joiner):
                raise WrongCodeError(
                    "the joining device typed a wrong code; the code is now used up, make a new one"
                )
            info = _open_sealed(self._keys.seal_joiner, msg)
            request = _join_request(info)
        except PairingError:
            self._state = "failed"
            raise
        self.request = request
        self._state = "decide"
        return request

    def admit(self, genesis_json: str, member_records: list[str]) -> bytes:
        """Message 4: the sealed genesis and all membership records (the joiner's included)."""
        _expect_state(self._state, "decide")
        if not isinstance(genesis_json, str) or not all(isinstance(r, str) for r in member_records):
            raise InputError("admit needs the genesis and the membership records as JSON text")
        body = {"t": "welcome", "genesis": genesis_json, "records": list(member_records)}
        self._state = "done"
        return self._seal(body)

    def refuse(self, reason: str) -> bytes:
        """Message 4 that turns the joiner away, with a short reason it will show."""
        _expect_state(self._state, "decide")
        self._state = "done"
        return self._seal({"t": "refused", "reason": _clean_reason(reason)})

    def _seal(self, body: dict[str, Any]) -> bytes:
        return _encode({"t": "sealed", "sealed": _seal(self._keys.seal_inviter, body)})


# -- the new device --------------------------------------------------------------


class JoinerSession:
    """The new device's side: ``start()``, then ``receive`` each answer until ``done``."""

    def __init__(
        self, code: PairingCode, keys: DeviceKeys, *, name: str, new_person: str = ""
    ) -> None:
        if not valid_name(name):
            raise InputError("the device name must be 1–64 characters without control characters")
        if new_person and not valid_name(new_person):
            raise InputError("the person's name must be 1–64 characters without control characters")
        self.code = code
        self.keys = keys
        self.name = name
        self.new_person = new_person
        self._spake = SPAKE2_A(code.password, idA=ID_JOINER, idB=ID_INVITER)
        self._keys: _SessionKeys | None = None
        self._result: JoinResult | None = None
        self._state = "new"  # new -> pake -> welcome -> done; or failed

    @property
    def state(self) -> str:
        return self._state

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def result(self) -> JoinResult:
        if self._result is None:
            raise PairingError("pairing has not completed")
        return self._result

    def start(self) -> bytes:
        """Message 1."""
        _expect_state(self._state, "new")
        self._state = "pake"
        spake_a = self._spake.start()
        return _encode({"t": "pake", "nameplate": self.code.nameplate, "msg": spake_a.hex()})

    def receive(self, data: bytes) -> bytes | None:
        """Message 2 → returns message 3; message 4 → returns None and sets ``result``."""
        if self._state not in ("pake", "welcome"):
            _expect_state(self._state, "pake")
        try:
            if self._state == "pake":
                return self._on_pake(data)
            self._on_welcome(data)
            return None
        except PairingError:
            self._state = "failed"
            raise

    def _on_pake(self, data: bytes) -> bytes:
        msg = _decode(data, "pake", {"msg", "confirm"})
        spake_b = _spake_message(msg, b"B")
        confirm = _hex_field(msg, "confirm", 32)
        keys = _SessionKeys(_finish(self._spake, spake_b))
        if not hmac.compare_digest(confirm, keys.confirm_inviter):
            raise WrongCodeError("the code does not match; ask for a new one")
        self._keys = keys
        self._state = "welcome"
        info = {
            "device": self.keys.device_id,
            "sign_key": self.keys.sign_public.hex(),
            "box_key": self.keys.box_public.hex(),
            "name": self.name,
            "new_person": self.new_person,
        }
        sealed = _seal(keys.seal_joiner, info)
        return _encode({"t": "confirm", "confirm": keys.confirm_joiner.hex(), "sealed": sealed})

    def _on_welcome(self, data: bytes) -> None:
        assert self._keys is not None
        msg = _decode(data, "sealed", {"sealed"}, limit=MAX_WELCOME_BYTES)
        body = _open_sealed(self._keys.seal_inviter, msg)
        kind = body.get("t")
        if kind == "refused" and set(body) == {"t", "reason"} and isinstance(body["reason"], str):
            raise PairingError(f"the inviting device refused: {_clean_reason(body['reason'])}")
        if kind != "welcome" or set(body) != {"t", "genesis", "records"}:
            raise PairingError("the inviting device sent an unreadable answer")
        genesis_json, records = body["genesis"], body["records"]
        if (
            not isinstance(genesis_json, str)
            or not isinstance(records, list)
            or len(records) > MAX_RECORDS
            or not all(isinstance(r, str) for r in records)
        ):
            raise PairingError("the inviting device sent an unreadable answer")
        verify_welcome(genesis_json, records, self.keys)
        self._result = JoinResult(genesis_json, tuple(records))
        self._state = "done"


def verify_welcome(genesis_json: str, records: list[str], keys: DeviceKeys) -> None:
    """Check the genesis, every record's chain of authority, and that ``keys``' device
    was admitted (and not revoked). Raises ``PairingError``."""
    try:
        genesis = parse_genesis(genesis_json)
        ordered = replay_membership(genesis, [parse_membership(r) for r in records])
    except KianaError as exc:
        raise PairingError(f"the inviting device sent an invalid mind: {exc.message}") from exc
    me = keys.device_id
    admitted = [
        r
        for r in ordered
        if r.action == "add"
        and r.device == me
        and r.sign_key == keys.sign_public
        and r.box_key == keys.box_public
    ]
    if not admitted:
        raise PairingError("the inviting device did not admit this device")
    if any(r.action == "revoke" and r.device == me for r in ordered):
        raise PairingError("the inviting device sent a list in which this device is revoked")


def abort_message(error: KianaError) -> bytes:
    """What to send the other side when a step raised ``error`` (best effort)."""
    return _encode({"t": "abort", "error": error.code})


# -- wire helpers ----------------------------------------------------------------


class _SessionKeys:
    __slots__ = ("confirm_inviter", "confirm_joiner", "seal_inviter", "seal_joiner")

    def __init__(self, key: bytes) -> None:
        self.confirm_inviter = _mac(key, _CONFIRM_INVITER)
        self.confirm_joiner = _mac(key, _CONFIRM_JOINER)
        self.seal_joiner = _mac(key, _SEAL_JOINER)
        self.seal_inviter = _mac(key, _SEAL_INVITER)


def _mac(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def _finish(spake: Any, message: bytes) -> bytes:
    try:
        key = spake.finish(message)
    except (ValueError, SPAKEError, NotOnCurve) as exc:
        raise PairingError("the other device sent an invalid key-exchange message") from exc
    return bytes(key)


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, **body}, separators=(",", ":")).encode("ascii")


def _decode(
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


def _hex_field(msg: dict[str, Any], key: str, size: int) -> bytes:
    value = msg[key]
    if not isinstance(value, str) or len(value) != 2 * size:
        raise PairingError(f"pairing field '{key}' has the wrong size")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise PairingError(f"pairing field '{key}' is not hex") from exc


def _spake_message(msg: dict[str, Any], side: bytes) -> bytes:
    raw = _hex_field(msg, "msg", _SPAKE_MSG_BYTES)
    if raw[:1] != side:
        raise PairingError("a key-exchange message came from the wrong side")
    return raw


def _seal(key: bytes, body: dict[str, Any]) -> str:
    plain = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(bytes(SecretBox(key).encrypt(plain))).decode("ascii")


def _open_sealed(key: bytes, msg: dict[str, Any]) -> dict[str, Any]:
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


def _join_request(info: dict[str, Any]) -> JoinRequest:
    if set(info) != {"device", "sign_key", "box_key", "name", "new_person"} or not all(
        isinstance(v, str) for v in info.values()
    ):
        raise PairingError("the joining device sent unreadable device information")
    sign_key = _hex_field(info, "sign_key", 32)
    box_key = _hex_field(info, "box_key", 32)
    if device_id_for(sign_key) != info["device"]:
        raise PairingError("the joining device's id is not the fingerprint of its key")
    if not valid_name(info["name"]):
        raise PairingError("the joining device sent an invalid device name")
    if info["new_person"] and not valid_name(info["new_person"]):
        raise PairingError("the joining device sent an invalid person name")
    return JoinRequest(info["device"], sign_key, box_key, info["name"], info["new_person"])


def _clean_reason(reason: str) -> str:
    text = "".join(c for c in str(reason) if c.isprintable())[:200].strip()
    return text or "no reason given"


def _expect_state(state: str, wanted: str) -> None:
    if state == wanted:
        return
    if state == "failed":
        raise PairingError("this pairing attempt has already failed; start a new one")
    if state == "done":
        raise PairingError("this pairing attempt is already finished")
    raise PairingError(f"pairing step out of order (at '{state}', not '{wanted}')")


__all__ = [
    "ATTEMPTS_PER_MINUTE",
    "HostSession",
    "Invitation",
    "JoinRequest",
    "JoinResult",
    "JoinerSession",
    "PairingHost",
    "abort_message",
    "verify_welcome",
]
