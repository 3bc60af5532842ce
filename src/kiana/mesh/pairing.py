"""Pairing a new device with a one-time code (SPAKE2), without I/O.

The inviter runs a ``PairingHost`` that hands out codes (``invite``) and a
``HostSession`` per incoming attempt (``accept``); the new device runs a
``JoinerSession``. Every step takes the received bytes (and on the host the
time in ms) and returns the bytes to send or a typed event; the shell moves the
bytes (docs/mesh.md, "Pairing (SPAKE2)").

This module is the inviter's side (``PairingHost``, ``HostSession``: open codes,
the rate limit, messages 2 and 4); the joiner's side is in ``pairing_joiner.py``
and the messages, keys and sealed boxes in ``pairing_wire.py``. Every public
name of the three is importable from here.

One guess per code: ``accept`` takes the code out of the open invitations
before any key is computed, so whatever happens next (success, a wrong
confirmation, a dropped connection) the code cannot be tried again. At most
five attempts per rolling minute are accepted across all codes.

Anything malformed raises ``PairingError`` (or a subclass); nothing here writes
to a store: the application admits the device after the ``JoinRequest``.
"""

from __future__ import annotations

import hmac
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from spake2 import SPAKE2_B

from kiana.errors import (
    CodeExpiredError,
    InputError,
    PairingError,
    RateLimitedError,
    WrongCodeError,
)
from kiana.mesh.codes import MAX_NAMEPLATE, PairingCode, new_code
from kiana.mesh.pairing_joiner import JoinerSession, verify_welcome
from kiana.mesh.pairing_wire import (
    ID_INVITER,
    ID_JOINER,
    MAX_HANDSHAKE_BYTES,
    MAX_RECORDS,
    MAX_WELCOME_BYTES,
    JoinRequest,
    JoinResult,
    SessionKeys,
    abort_message,
    clean_reason,
    decode,
    encode,
    expect_state,
    finish_spake,
    hex_field,
    join_request,
    open_sealed,
    seal,
    spake_message,
)

ATTEMPTS_PER_MINUTE = 5
ATTEMPT_WINDOW_MS = 60_000
SESSION_TIMEOUT_MS = 120_000  # from accept to the joiner's confirmation
MAX_OPEN_INVITATIONS = 100


# -- the inviter -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invitation:
    code: PairingCode
    expires: int  # ms


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
        msg = decode(first_message, "pake", {"nameplate", "msg"})
        nameplate = msg["nameplate"]
        if not isinstance(nameplate, int) or isinstance(nameplate, bool):
            raise PairingError("a pairing message names no code number")
        if not 1 <= nameplate <= MAX_NAMEPLATE:
            raise PairingError("a pairing message names an impossible code number")
        spake_a = spake_message(msg, b"A")
        self._expire(now)
        invitation = self._open.pop(nameplate, None)
        if invitation is None:
            raise CodeExpiredError(
                f"no open pairing code {nameplate}: it expired, was already used or was "
                "never issued; make a new one"
            )
        spake = SPAKE2_B(invitation.code.password, idA=ID_JOINER, idB=ID_INVITER)
        spake_b = spake.start()
        keys = SessionKeys(finish_spake(spake, spake_a))
        session = HostSession(nameplate, keys, deadline=now + self._session_timeout)
        reply = encode({"t": "pake", "msg": spake_b.hex(), "confirm": keys.confirm_inviter.hex()})
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

    def __init__(self, nameplate: int, keys: SessionKeys, *, deadline: int) -> None:
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
        expect_state(self._state, "confirm")
        try:
            if now > self.deadline:
                raise PairingError("the joining device took too long; make a new code")
            msg = decode(data, "confirm", {"confirm", "sealed"})
            confirm = hex_field(msg, "confirm", 32)
            if not hmac.compare_digest(confirm, self._keys.confirm_joiner):
                raise WrongCodeError(
                    "the joining device typed a wrong code; the code is now used up, make a new one"
                )
            info = open_sealed(self._keys.seal_joiner, msg)
            request = join_request(info)
        except PairingError:
            self._state = "failed"
            raise
        self.request = request
        self._state = "decide"
        return request

    def admit(self, genesis_json: str, member_records: list[str]) -> bytes:
        """Message 4: the sealed genesis and all membership records (the joiner's included)."""
        expect_state(self._state, "decide")
        if not isinstance(genesis_json, str) or not all(isinstance(r, str) for r in member_records):
            raise InputError("admit needs the genesis and the membership records as JSON text")
        body = {"t": "welcome", "genesis": genesis_json, "records": list(member_records)}
        self._state = "done"
        return self._seal(body)

    def refuse(self, reason: str) -> bytes:
        """Message 4 that turns the joiner away, with a short reason it will show."""
        expect_state(self._state, "decide")
        self._state = "done"
        return self._seal({"t": "refused", "reason": clean_reason(reason)})

    def _seal(self, body: dict[str, Any]) -> bytes:
        return encode({"t": "sealed", "sealed": seal(self._keys.seal_inviter, body)})


__all__ = [
    "ATTEMPTS_PER_MINUTE",
    "ATTEMPT_WINDOW_MS",
    "ID_INVITER",
    "ID_JOINER",
    "MAX_HANDSHAKE_BYTES",
    "MAX_OPEN_INVITATIONS",
    "MAX_RECORDS",
    "MAX_WELCOME_BYTES",
    "SESSION_TIMEOUT_MS",
    "HostSession",
    "Invitation",
    "JoinRequest",
    "JoinResult",
    "JoinerSession",
    "PairingHost",
    "abort_message",
    "verify_welcome",
]
