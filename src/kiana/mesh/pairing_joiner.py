"""The new device's side of pairing (``JoinerSession``), without I/O.

It runs message 1 (the code's nameplate and SPAKE2 side A), checks the
inviter's confirmation in message 2 and answers with message 3 (its own
confirmation and sealed device information), then opens message 4 and checks
what it got with ``verify_welcome``: the genesis, the chain of authority of every
membership record, and that this device was admitted. The messages and keys are
in ``pairing_wire.py``; the inviter's side is in ``pairing.py``.
"""

from __future__ import annotations

import hmac

from spake2 import SPAKE2_A

from kiana.errors import InputError, KianaError, PairingError, WrongCodeError
from kiana.identity.keys import DeviceKeys
from kiana.identity.membership import parse_membership, replay_membership, valid_name
from kiana.identity.mind import parse_genesis
from kiana.mesh.codes import PairingCode
from kiana.mesh.pairing_wire import (
    ID_INVITER,
    ID_JOINER,
    MAX_RECORDS,
    MAX_WELCOME_BYTES,
    JoinResult,
    SessionKeys,
    clean_reason,
    decode,
    encode,
    expect_state,
    finish_spake,
    hex_field,
    open_sealed,
    seal,
    spake_message,
)

__all__ = ["JoinerSession", "verify_welcome"]


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
        self._keys: SessionKeys | None = None
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
        expect_state(self._state, "new")
        self._state = "pake"
        spake_a = self._spake.start()
        return encode({"t": "pake", "nameplate": self.code.nameplate, "msg": spake_a.hex()})

    def receive(self, data: bytes) -> bytes | None:
        """Message 2 → returns message 3; message 4 → returns None and sets ``result``."""
        if self._state not in ("pake", "welcome"):
            expect_state(self._state, "pake")
        try:
            if self._state == "pake":
                return self._on_pake(data)
            self._on_welcome(data)
            return None
        except PairingError:
            self._state = "failed"
            raise

    def _on_pake(self, data: bytes) -> bytes:
        msg = decode(data, "pake", {"msg", "confirm"})
        spake_b = spake_message(msg, b"B")
        confirm = hex_field(msg, "confirm", 32)
        keys = SessionKeys(finish_spake(self._spake, spake_b))
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
        sealed = seal(keys.seal_joiner, info)
        return encode({"t": "confirm", "confirm": keys.confirm_joiner.hex(), "sealed": sealed})

    def _on_welcome(self, data: bytes) -> None:
        assert self._keys is not None
        msg = decode(data, "sealed", {"sealed"}, limit=MAX_WELCOME_BYTES)
        body = open_sealed(self._keys.seal_inviter, msg)
        kind = body.get("t")
        if kind == "refused" and set(body) == {"t", "reason"} and isinstance(body["reason"], str):
            raise PairingError(f"the inviting device refused: {clean_reason(body['reason'])}")
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
