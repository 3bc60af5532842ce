"""Ledger records and the Merkle root that a sealed block commits to.

A record is one fact the mind agrees on, as a canonical JSON object
(``kiana.blocks.canonical``)::

    {"v": 1, "kind": "member", "record": "<membership record, canonical JSON text>"}
    {"v": 1, "kind": "commit", "block": "<knowledge block id>"}
    {"v": 1, "kind": "erase",  "tombstone": "<tombstone id>", "block": "<erased block id>"}
    {"v": 1, "kind": "private", "token": "<blinded commit or erasure of a private block>"}

The ledger is shared by every device of the mind, private memory is not: a private
block's id must never reach another person's device. So a private block is committed as
a ``private`` record whose token is ``private_commit_token`` (SHA-256 over a domain, the
block id and the author's Ed25519 signature of it), and the erasure of a private block
as one whose token is ``private_erase_token`` (the same over the tombstone). Ed25519 is
deterministic, so every device that holds the block or tombstone recomputes the token,
while nobody else can test a guessed block against it (that needs the author's key).
The record does not even say whether it blinds a commit or an erasure.

``"vote"`` and ``"rotate"`` are reserved for later issues and refused with
``UnsupportedRecordError``. A record's id is the lowercase hex SHA-256 of its canonical
bytes. Member records carry the membership record exactly as ``record_json`` writes it,
so one membership fact has one record id.

The Merkle root hashes leaves and inner nodes with different prefixes (so a node can
never pass for a leaf) and duplicates the last node of an odd level. Duplicating lets
``[a, b, c]`` and ``[a, b, c, c]`` share a root (CVE-2012-2459); blocks therefore refuse
a record that appears twice (``check_unique``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiana.blocks.canonical import canonical_bytes
from kiana.errors import BlockError
from kiana.identity.membership import MembershipRecord, parse_membership, record_json
from kiana.ledger.errors import MalformedLedgerError, UnsupportedRecordError

KINDS = ("member", "commit", "erase", "private")
RESERVED_KINDS = ("vote", "rotate")
MAX_RECORD_BYTES = 8192

_LEAF = b"kiana:ledger:leaf\x00"
_NODE = b"kiana:ledger:node\x00"
_EMPTY = b"kiana:ledger:empty\x00"
_PRIVATE_COMMIT = b"kiana:ledger:private-commit\x00"
_PRIVATE_ERASE = b"kiana:ledger:private-erase\x00"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {
    "member": frozenset({"v", "kind", "record"}),
    "commit": frozenset({"v", "kind", "block"}),
    "erase": frozenset({"v", "kind", "tombstone", "block"}),
    "private": frozenset({"v", "kind", "token"}),
}


@dataclass(frozen=True, slots=True)
class Record:
    """One ledger record; build it with ``member_record``, ``commit_record``, ``erase_record``."""

    kind: str
    record: str = ""  # member: membership record JSON text
    block: str = ""  # commit: knowledge block id; erase: the erased block's id
    tombstone: str = ""  # erase: the tombstone's id
    token: str = ""  # private: ``private_commit_token`` or ``private_erase_token``
    id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self)
        object.__setattr__(self, "id", hashlib.sha256(self.canonical()).hexdigest())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": 1, "kind": self.kind}
        if self.kind == "member":
            out["record"] = self.record
        elif self.kind == "commit":
            out["block"] = self.block
        elif self.kind == "private":
            out["token"] = self.token
        else:
            out["tombstone"] = self.tombstone
            out["block"] = self.block
        return out

    def canonical(self) -> bytes:
        return canonical_bytes(self.to_dict())

    def membership(self) -> MembershipRecord:
        """The membership record of a ``member`` record (shape checked, not the signature)."""
        if self.kind != "member":
            raise MalformedLedgerError(f"a {self.kind} record carries no membership record")
        return parse_membership(self.record)


def member_record(r: MembershipRecord) -> Record:
    return Record("member", record=record_json(r))


def commit_record(block_id: str) -> Record:
    return Record("commit", block=block_id)


def erase_record(tombstone_id: str, block_id: str) -> Record:
    return Record("erase", tombstone=tombstone_id, block=block_id)


def private_record(token: str) -> Record:
    return Record("private", token=token)


def private_commit_token(block_id: str, sig: str) -> str:
    """The token that commits private block ``block_id`` (``sig``: its author's signature)."""
    return _token(_PRIVATE_COMMIT, block_id, sig)


def private_erase_token(tombstone_id: str, sig: str) -> str:
    """The token that records the erasure of a private block by tombstone ``tombstone_id``."""
    return _token(_PRIVATE_ERASE, tombstone_id, sig)


def _token(domain: bytes, item_id: str, sig: str) -> str:
    try:
        raw = bytes.fromhex(item_id) + bytes.fromhex(sig)
    except ValueError as exc:
        raise MalformedLedgerError("a private token needs a hex id and signature") from exc
    return hashlib.sha256(domain + raw).hexdigest()


def _check(r: Record) -> None:
    if r.kind in RESERVED_KINDS:
        raise UnsupportedRecordError(f"ledger records of kind '{r.kind}' are not supported yet")
    if r.kind not in KINDS:
        raise MalformedLedgerError("unknown ledger record kind")
    if r.kind == "member":
        if r.block or r.tombstone or r.token:
            raise MalformedLedgerError("a member record carries only a membership record")
        try:
            parsed = parse_membership(r.record)
        except BlockError as exc:
            raise MalformedLedgerError(f"a member record is invalid: {exc.message}") from exc
        if record_json(parsed) != r.record:
            raise MalformedLedgerError("a member record's membership record is not canonical")
        return
    if r.kind == "private":
        if r.record or r.block or r.tombstone:
            raise MalformedLedgerError("a private record carries only its token")
        if not HEX64.match(r.token):
            raise MalformedLedgerError("a private record's token is lowercase hex SHA-256")
        return
    if r.record or r.token or (r.kind == "commit" and r.tombstone):
        raise MalformedLedgerError(f"a {r.kind} record has fields of another kind")
    if not HEX64.match(r.block) or (r.kind == "erase" and not HEX64.match(r.tombstone)):
        raise MalformedLedgerError(f"a {r.kind} record needs lowercase hex SHA-256 ids")


def record_from_dict(raw: object) -> Record:
    """A record from its decoded JSON object; raises ``MalformedLedgerError`` on bad shape."""
    if not isinstance(raw, dict):
        raise MalformedLedgerError("a ledger record must be a JSON object")
    kind = raw.get("kind")
    if kind in RESERVED_KINDS:
        raise UnsupportedRecordError(f"ledger records of kind '{kind}' are not supported yet")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise MalformedLedgerError("unknown ledger record kind")
    if raw.get("v") != 1 or isinstance(raw.get("v"), bool):
        raise MalformedLedgerError("a ledger record has an unknown format version")
    if set(raw) != _FIELDS[kind]:
        raise MalformedLedgerError(f"a {kind} record has missing or extra fields")
    values = {k: v for k, v in raw.items() if k not in ("v", "kind")}
    if not all(isinstance(v, str) for v in values.values()):
        raise MalformedLedgerError(f"the fields of a {kind} record must be strings")
    return Record(kind, **values)


def parse_record(data: str | bytes) -> Record:
    """Parse a record's JSON text; raises ``MalformedLedgerError`` or ``UnsupportedRecordError``."""
    if len(data) > MAX_RECORD_BYTES:
        raise MalformedLedgerError("a ledger record is larger than 8 KiB")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedLedgerError("a ledger record is not valid JSON") from exc
    return record_from_dict(raw)


def record_text(r: Record) -> str:
    return r.canonical().decode("utf-8")


def check_unique(records: Iterable[Record]) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise MalformedLedgerError(f"record {r.id[:12]} appears twice in one block")
        seen.add(r.id)


def merkle_root(ids: Sequence[str]) -> str:
    """Merkle root (hex) over record ids (hex SHA-256), in order."""
    if not ids:
        return hashlib.sha256(_EMPTY).hexdigest()
    sha = hashlib.sha256
    level = [sha(_LEAF + bytes.fromhex(i)).digest() for i in ids]
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


__all__ = [
    "KINDS",
    "RESERVED_KINDS",
    "Record",
    "check_unique",
    "commit_record",
    "erase_record",
    "member_record",
    "merkle_root",
    "parse_record",
    "private_commit_token",
    "private_erase_token",
    "private_record",
    "record_from_dict",
    "record_text",
]
