"""The genesis record that creates a mind, signed by its first authority device."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.signing import VerifyKey

from kiana.blocks.canonical import canonical_bytes
from kiana.errors import BadSignatureError, HomeError
from kiana.identity.keys import DeviceKeys, device_id_for

GENESIS_DOMAIN = b"kiana:genesis:v1\x00"
_PERSON = re.compile(r"^p-[a-z2-7]{8}$")


@dataclass(frozen=True, slots=True)
class Genesis:
    name: str
    created: int
    device: str
    device_name: str
    person: str
    sign_key: bytes
    box_key: bytes
    sig: str = ""

    def unsigned_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "name": self.name,
            "created": self.created,
            "authority": {
                "device": self.device,
                "device_name": self.device_name,
                "person": self.person,
                "sign_key": self.sign_key.hex(),
                "box_key": self.box_key.hex(),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        out = self.unsigned_dict()
        out["mind"] = self.mind_id
        out["sig"] = self.sig
        return out

    @property
    def mind_id(self) -> str:
        digest = hashlib.sha256(canonical_bytes(self.unsigned_dict())).digest()[:10]
        return "mind-" + base64.b32encode(digest).decode().lower()


def new_person_id() -> str:
    return "p-" + base64.b32encode(os.urandom(5)).decode().lower()


def make_genesis(
    keys: DeviceKeys, *, name: str, device_name: str, created: int, person: str
) -> Genesis:
    draft = Genesis(
        name=name,
        created=created,
        device=keys.device_id,
        device_name=device_name,
        person=person,
        sign_key=keys.sign_public,
        box_key=keys.box_public,
    )
    message = GENESIS_DOMAIN + hashlib.sha256(canonical_bytes(draft.unsigned_dict())).digest()
    sig = keys.signing.sign(message).signature.hex()
    return Genesis(**{**_fields(draft), "sig": sig})


def _fields(g: Genesis) -> dict[str, Any]:
    return {s: getattr(g, s) for s in Genesis.__slots__}


def parse_genesis(data: bytes | str) -> Genesis:
    """Parse and verify a genesis record; raises ``HomeError`` or ``BadSignatureError``."""
    try:
        raw = json.loads(data)
        auth = raw["authority"]
        genesis = Genesis(
            name=str(raw["name"]),
            created=int(raw["created"]),
            device=str(auth["device"]),
            device_name=str(auth["device_name"]),
            person=str(auth["person"]),
            sign_key=bytes.fromhex(auth["sign_key"]),
            box_key=bytes.fromhex(auth["box_key"]),
            sig=str(raw["sig"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise HomeError("the mind's genesis record is unreadable or corrupt") from exc
    if raw.get("v") != 1 or raw.get("mind") != genesis.mind_id:
        raise HomeError("the mind's genesis record does not match its mind id")
    if device_id_for(genesis.sign_key) != genesis.device or not _PERSON.match(genesis.person):
        raise HomeError("the mind's genesis record names an inconsistent authority")
    message = GENESIS_DOMAIN + hashlib.sha256(canonical_bytes(genesis.unsigned_dict())).digest()
    try:
        VerifyKey(genesis.sign_key).verify(message, bytes.fromhex(genesis.sig))
    except (NaclBadSignature, ValueError) as exc:
        raise BadSignatureError("the mind's genesis record has an invalid signature") from exc
    return genesis
