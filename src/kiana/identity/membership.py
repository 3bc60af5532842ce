"""Membership records: an authority device admits or revokes another device.

A record is canonical JSON (``kiana.blocks.canonical``) signed with Ed25519 by an
authority device over ``kiana:membership:v1\\0`` + SHA-256 of the unsigned record
(docs/mesh.md, "Identities and membership")::

    {"v": 1, "kind": "membership", "mind": "mind-…", "action": "add" | "revoke",
     "device": "abcd-…", "sign_key": "hex", "box_key": "hex",
     "role": "authority" | "member", "person": "p-…", "name": "phone",
     "by": "signer device id", "created": 1764000000000, "sig": "hex"}

Errors: a record of the wrong shape is a ``MalformedBlockError`` (``UnknownFormatError``
for another version); a device id that is not the fingerprint of its signing key an
``IdMismatchError``; a record for another mind or signed by a device that is not a
current authority a ``NotMemberError``; a signature that does not verify a
``BadSignatureError``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.signing import VerifyKey

from kiana.blocks.canonical import MAX_INT, canonical_bytes
from kiana.errors import (
    BadSignatureError,
    HomeError,
    IdMismatchError,
    MalformedBlockError,
    NotMemberError,
    UnknownFormatError,
)
from kiana.identity.keys import DeviceKeys, device_id_for
from kiana.identity.mind import Genesis
from kiana.store.blocks import BlockStore
from kiana.store.types import Device

MEMBERSHIP_DOMAIN = b"kiana:membership:v1\x00"
ACTIONS = ("add", "revoke")
ROLES = ("authority", "member")
MAX_RECORD_BYTES = 4096
MAX_NAME_CHARS = 64

AuthorityKey = Callable[[str], bytes | None]
"""Signing key of ``device`` if it is a current (active) authority of the mind, else None."""

_FIELDS = frozenset(
    {
        "v",
        "kind",
        "mind",
        "action",
        "device",
        "sign_key",
        "box_key",
        "role",
        "person",
        "name",
        "by",
        "created",
        "sig",
    }
)
_DEVICE = re.compile(r"^[a-z2-7]{4}(?:-[a-z2-7]{4}){3}$")
_MIND = re.compile(r"^mind-[a-z2-7]{16}$")
_PERSON = re.compile(r"^p-[a-z2-7]{8}$")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_SIG = re.compile(r"^[0-9a-f]{128}$")


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    mind: str
    action: str  # "add" or "revoke"
    device: str
    sign_key: bytes
    box_key: bytes
    role: str  # "authority" or "member"
    person: str
    name: str
    by: str  # device id of the signing authority
    created: int  # ms
    sig: str = ""  # hex Ed25519 signature

    def unsigned_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "kind": "membership",
            "mind": self.mind,
            "action": self.action,
            "device": self.device,
            "sign_key": self.sign_key.hex(),
            "box_key": self.box_key.hex(),
            "role": self.role,
            "person": self.person,
            "name": self.name,
            "by": self.by,
            "created": self.created,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.unsigned_dict(), "sig": self.sig}

    def signed_message(self) -> bytes:
        return MEMBERSHIP_DOMAIN + hashlib.sha256(canonical_bytes(self.unsigned_dict())).digest()


def sign_membership(
    keys: DeviceKeys,
    *,
    mind: str,
    action: str,
    device: str,
    sign_key: bytes,
    box_key: bytes,
    role: str,
    person: str,
    name: str,
    created: int,
) -> MembershipRecord:
    """Sign a record with ``keys`` (the record's ``by`` is their device id)."""
    draft = MembershipRecord(
        mind=mind,
        action=action,
        device=device,
        sign_key=sign_key,
        box_key=box_key,
        role=role,
        person=person,
        name=name,
        by=keys.device_id,
        created=created,
    )
    _check_shape(draft)  # never sign a record that parse_membership would refuse
    sig = keys.signing.sign(draft.signed_message()).signature.hex()
    return MembershipRecord(**{**_fields(draft), "sig": sig})


def record_json(r: MembershipRecord) -> str:
    """The record as canonical JSON text (what is stored and sent)."""
    return canonical_bytes(r.to_dict()).decode("utf-8")


def parse_membership(data: str | bytes) -> MembershipRecord:
    """Parse a record's JSON and check its shape (not its signature: see verify_membership)."""
    if len(data) > MAX_RECORD_BYTES:
        raise MalformedBlockError("a membership record is larger than 4 KiB")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedBlockError("a membership record is not valid JSON") from exc
    if not isinstance(raw, dict):
        raise MalformedBlockError("a membership record must be a JSON object")
    if raw.get("kind") != "membership":
        raise MalformedBlockError("not a membership record")
    if raw.get("v") != 1 or isinstance(raw.get("v"), bool):
        raise UnknownFormatError("a membership record has an unknown format version")
    if set(raw) != _FIELDS:
        raise MalformedBlockError("a membership record has missing or extra fields")
    for key in _FIELDS - {"v", "created"}:
        if not isinstance(raw[key], str):
            raise MalformedBlockError(f"membership field '{key}' must be a string")
    created = raw["created"]
    if not isinstance(created, int) or isinstance(created, bool):
        raise MalformedBlockError("membership field 'created' must be an integer")
    if not _KEY.match(raw["sign_key"]) or not _KEY.match(raw["box_key"]):
        raise MalformedBlockError("membership keys must be 32 bytes in lowercase hex")
    if not _SIG.match(raw["sig"]):
        raise MalformedBlockError("a membership signature must be 64 bytes in lowercase hex")
    record = MembershipRecord(
        mind=raw["mind"],
        action=raw["action"],
        device=raw["device"],
        sign_key=bytes.fromhex(raw["sign_key"]),
        box_key=bytes.fromhex(raw["box_key"]),
        role=raw["role"],
        person=raw["person"],
        name=raw["name"],
        by=raw["by"],
        created=created,
        sig=raw["sig"],
    )
    _check_shape(record)
    return record


def _check_shape(r: MembershipRecord) -> None:
    if r.action not in ACTIONS:
        raise MalformedBlockError("membership action must be 'add' or 'revoke'")
    if r.role not in ROLES:
        raise MalformedBlockError("membership role must be 'authority' or 'member'")
    if not _MIND.match(r.mind):
        raise MalformedBlockError("membership field 'mind' is not a mind id")
    if not _DEVICE.match(r.device) or not _DEVICE.match(r.by):
        raise MalformedBlockError("membership fields 'device' and 'by' must be device ids")
    if not _PERSON.match(r.person):
        raise MalformedBlockError("membership field 'person' is not a person id")
    if len(r.sign_key) != 32 or len(r.box_key) != 32:
        raise MalformedBlockError("membership keys must be 32 bytes")
    if not valid_name(r.name):
        raise MalformedBlockError(
            f"a device name must be 1–{MAX_NAME_CHARS} characters without control characters"
        )
    if not 0 <= r.created <= MAX_INT:
        raise MalformedBlockError("membership field 'created' is out of range")


def valid_name(name: str) -> bool:
    """A device (or person) name: 1–64 characters, no control characters."""
    return (
        0 < len(name) <= MAX_NAME_CHARS
        and name == name.strip()
        and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name)
    )


def verify_membership(r: MembershipRecord, *, mind_id: str, authority_key: AuthorityKey) -> None:
    """Check that ``r`` belongs to ``mind_id`` and is signed by a current authority."""
    if r.mind != mind_id:
        raise NotMemberError(f"a membership record is for {r.mind}, not for {mind_id}")
    if device_id_for(r.sign_key) != r.device:
        raise IdMismatchError(
            f"membership record: device id {r.device} is not the fingerprint of its signing key"
        )
    key = authority_key(r.by)
    if key is None:
        raise NotMemberError(
            f"a membership record is signed by {r.by}, which is not an authority of {mind_id}"
        )
    try:
        VerifyKey(key).verify(r.signed_message(), bytes.fromhex(r.sig))
    except (NaclBadSignature, ValueError) as exc:
        raise BadSignatureError(
            f"the membership record for {r.device} has an invalid signature"
        ) from exc


def store_authority_key(store: BlockStore) -> AuthorityKey:
    """An ``AuthorityKey`` over the store's ``devices`` table (read once)."""
    authorities = {
        d.device_id: d.sign_key for d in store.devices() if d.active and d.role == "authority"
    }
    return authorities.get


def apply_membership(store: BlockStore, r: MembershipRecord, *, verified: bool = False) -> bool:
    """Apply ``r`` to the ``devices`` table; returns whether anything changed.

    Unless ``verified``, the record is first checked against the store's mind id and
    its current authorities. An ``add`` for a device already known (even revoked) is a
    no-op; a ``revoke`` of a device not yet known records the device as revoked, so a
    late-arriving ``add`` cannot bring it back.
    """
    if not verified:
        mind_id = store.get_meta("mind_id")
        if mind_id is None:
            raise HomeError("the database holds no mind yet; cannot apply membership records")
        verify_membership(r, mind_id=mind_id, authority_key=store_authority_key(store))
    text = record_json(r)
    known = store.device(r.device)
    if r.action == "add":
        if known is not None:
            return False
        store.add_device(device_of(r, text))
        return True
    if known is None:
        store.add_device(device_of(r, text))
    return store.revoke_device(r.device, at=r.created, record=text)


def replay_membership(
    genesis: Genesis, records: Iterable[MembershipRecord]
) -> list[MembershipRecord]:
    """Verify ``records`` starting from the genesis authority, in memory.

    Returns them in an order that ``apply_membership`` accepts one by one on a store
    holding only the genesis device: adds first, each once its signer is an authority
    (a record may be signed by an authority another record admits), then revocations
    oldest first. Raises the first verification error; any record whose signer never
    becomes an authority is a ``NotMemberError``.
    """
    records = list(records)
    mind_id = genesis.mind_id
    state: dict[str, tuple[bytes, str, bool]] = {  # device -> (sign key, role, active)
        genesis.device: (genesis.sign_key, "authority", True)
    }

    def authority(device: str) -> bytes | None:
        entry = state.get(device)
        return entry[0] if entry is not None and entry[1] == "authority" and entry[2] else None

    ordered: list[MembershipRecord] = []
    pending = [r for r in records if r.action == "add"]
    progress = True
    while pending and progress:
        progress = False
        for r in list(pending):
            if authority(r.by) is None:
                continue
            verify_membership(r, mind_id=mind_id, authority_key=authority)
            pending.remove(r)
            progress = True
            if r.device not in state:
                state[r.device] = (r.sign_key, r.role, True)
                ordered.append(r)
    if pending:
        verify_membership(pending[0], mind_id=mind_id, authority_key=authority)  # raises
    for r in sorted((r for r in records if r.action == "revoke"), key=lambda r: r.created):
        verify_membership(r, mind_id=mind_id, authority_key=authority)
        key, role, active = state.get(r.device, (r.sign_key, r.role, True))
        if active:
            state[r.device] = (key, role, False)
            ordered.append(r)
    return ordered


def device_of(r: MembershipRecord, text: str | None = None) -> Device:
    """The ``devices`` row an ``add`` record makes (``text``: the record's JSON, if known)."""
    return Device(
        device_id=r.device,
        sign_key=r.sign_key,
        box_key=r.box_key,
        role=r.role,
        person=r.person,
        name=r.name,
        added=r.created,
        record=record_json(r) if text is None else text,
    )


def _fields(r: MembershipRecord) -> dict[str, Any]:
    return {s: getattr(r, s) for s in MembershipRecord.__slots__}


__all__ = [
    "ACTIONS",
    "MEMBERSHIP_DOMAIN",
    "ROLES",
    "AuthorityKey",
    "MembershipRecord",
    "apply_membership",
    "device_of",
    "parse_membership",
    "record_json",
    "replay_membership",
    "sign_membership",
    "store_authority_key",
    "valid_name",
    "verify_membership",
]
