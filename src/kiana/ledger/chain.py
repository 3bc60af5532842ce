"""Sealed ledger blocks: the header, its signature, the genesis block and verification.

A block on the wire (canonical JSON, ``kiana.blocks.canonical``)::

    {"v": 1, "height": 7, "parent": "<hash hex>", "time": 1764000000000,
     "signer": "<device id>", "merkle": "<root hex>", "difficulty": 2,
     "checkpoint": ["<device id>", ...], "records": [{...}, ...], "sig": "<hex>"}

The header is every field but ``records`` (bound through ``merkle``) and ``sig``. The
signer signs ``kiana:ledger:v1\\0`` + SHA-256 of the canonical header with Ed25519; the
block's hash is the SHA-256 of the canonical header with ``sig`` added. ``checkpoint``
lists the authorities (sorted) at the parent on every ``epoch``-th block and is empty
otherwise.

The genesis block (height 0) is not signed: it is derived from the mind's ``Genesis``
(its parent is the SHA-256 of the canonical genesis record), so every device of a mind
computes the same one and nobody can forge another.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.signing import VerifyKey

from kiana.blocks.canonical import MAX_INT, canonical_bytes
from kiana.identity.keys import DeviceKeys
from kiana.identity.mind import Genesis
from kiana.ledger.errors import (
    BadCheckpointError,
    BadDifficultyError,
    BadLedgerSignatureError,
    BadLinkError,
    BadMerkleRootError,
    BadTimeError,
    MalformedLedgerError,
    NotAuthorityError,
)
from kiana.ledger.records import HEX64, Record, check_unique, merkle_root, record_from_dict
from kiana.ledger.state import (
    DEFAULT_PARAMS,
    ChainState,
    Committed,
    Params,
    apply_records,
    check_signer_limit,
    min_gap,
    note_sealed,
)

LEDGER_DOMAIN = b"kiana:ledger:v1\x00"
IN_TURN = 2
OUT_OF_TURN = 1
MAX_BLOCK_BYTES = 16 * 1024 * 1024
_DEVICE = re.compile(r"^[a-z2-7]{4}(?:-[a-z2-7]{4}){3}$")
_SIG = re.compile(r"^[0-9a-f]{128}$")
_FIELDS = frozenset(
    {"v", "height", "parent", "time", "signer", "merkle", "difficulty", "checkpoint"}
    | {"records", "sig"}
)


@dataclass(frozen=True, slots=True)
class LedgerBlock:
    height: int
    parent: str  # hash hex of the parent block
    time: int  # ms since the epoch
    signer: str  # device id
    records: tuple[Record, ...]
    merkle: str  # Merkle root of the record ids
    difficulty: int  # 2 in turn, 1 out of turn (0 for genesis)
    checkpoint: tuple[str, ...] = ()  # sorted authorities at the parent, on epoch blocks
    sig: str = ""
    hash: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            signed = canonical_bytes({**self.header(), "sig": self.sig})
        except ValueError as exc:
            raise MalformedLedgerError(f"a ledger block header cannot be encoded: {exc}") from exc
        object.__setattr__(self, "hash", hashlib.sha256(signed).hexdigest())

    def header(self) -> dict[str, Any]:
        return {
            "v": 1,
            "height": self.height,
            "parent": self.parent,
            "time": self.time,
            "signer": self.signer,
            "merkle": self.merkle,
            "difficulty": self.difficulty,
            "checkpoint": list(self.checkpoint),
        }

    def signed_message(self) -> bytes:
        return LEDGER_DOMAIN + hashlib.sha256(canonical_bytes(self.header())).digest()

    def to_dict(self) -> dict[str, Any]:
        return {**self.header(), "records": [r.to_dict() for r in self.records], "sig": self.sig}


def genesis_block(genesis: Genesis) -> LedgerBlock:
    return LedgerBlock(
        height=0,
        parent=hashlib.sha256(canonical_bytes(genesis.to_dict())).hexdigest(),
        time=genesis.created,
        signer=genesis.device,
        records=(),
        merkle=merkle_root(()),
        difficulty=0,
        checkpoint=(genesis.device,),
    )


def is_checkpoint(height: int, params: Params = DEFAULT_PARAMS) -> bool:
    return height > 0 and height % params.epoch == 0


def seal(
    keys: DeviceKeys,
    parent: LedgerBlock,
    records: Sequence[Record],
    time: int,
    state: ChainState,
    params: Params = DEFAULT_PARAMS,
) -> LedgerBlock:
    """Seal ``records`` on ``parent``; ``state`` is the chain's state at ``parent``.

    Checks only that ``keys`` belong to an authority; ``verify_block`` checks the rest.
    """
    signer = keys.device_id
    if state.key(signer) is None:
        raise NotAuthorityError(f"{signer} is not an authority of {state.mind}")
    height = parent.height + 1
    draft = LedgerBlock(
        height=height,
        parent=parent.hash,
        time=time,
        signer=signer,
        records=tuple(records),
        merkle=merkle_root([r.id for r in records]),
        difficulty=IN_TURN if state.in_turn(height) == signer else OUT_OF_TURN,
        checkpoint=state.signers() if is_checkpoint(height, params) else (),
    )
    sig = keys.signing.sign(draft.signed_message()).signature.hex()
    return LedgerBlock(**{**_fields(draft), "sig": sig})


def verify_block(
    block: LedgerBlock,
    parent: LedgerBlock,
    state: ChainState,
    *,
    params: Params = DEFAULT_PARAMS,
    committed: Committed | None = None,
) -> ChainState:
    """Check ``block`` on ``parent`` (``state``: the chain's state at ``parent``).

    Returns the state after ``block``; raises a ``LedgerError`` subclass naming the first
    rule it breaks. ``committed`` says which records are already on the chain below.
    """
    if block.height != parent.height + 1 or block.parent != parent.hash:
        raise BadLinkError(f"block {block.height} does not follow block {parent.height}")
    key = state.key(block.signer)
    if key is None:
        raise NotAuthorityError(
            f"block {block.height} is sealed by {block.signer}, not an authority at that height"
        )
    try:
        VerifyKey(key).verify(block.signed_message(), bytes.fromhex(block.sig))
    except (NaclBadSignature, ValueError) as exc:
        raise BadLedgerSignatureError(f"block {block.height} has an invalid signature") from exc
    check_unique(block.records)
    if len(block.records) > params.max_records:
        raise MalformedLedgerError(f"block {block.height} holds too many records")
    if merkle_root([r.id for r in block.records]) != block.merkle:
        raise BadMerkleRootError(f"block {block.height}'s Merkle root does not match its records")
    in_turn = state.in_turn(block.height) == block.signer
    if block.difficulty != (IN_TURN if in_turn else OUT_OF_TURN):
        raise BadDifficultyError(
            f"block {block.height} claims difficulty {block.difficulty} but is "
            + ("in turn" if in_turn else "out of turn")
        )
    gap = min_gap(state, block.signer, block.height, params)
    if block.time < parent.time + gap:
        raise BadTimeError(
            f"block {block.height} comes {block.time - parent.time} ms after its parent; "
            f"{'in' if in_turn else 'out of'} turn it must wait {gap} ms"
        )
    check_signer_limit(state, block.signer, block.height, block.time, params)
    expected = state.signers() if is_checkpoint(block.height, params) else ()
    if block.checkpoint != expected:
        raise BadCheckpointError(f"block {block.height}'s checkpoint authority list is wrong")
    after = apply_records(state, block.records, committed=committed)
    return note_sealed(after, block.signer, block.height, block.time)


def block_json(block: LedgerBlock) -> str:
    return canonical_bytes(block.to_dict()).decode("utf-8")


def parse_block(data: str | bytes) -> LedgerBlock:
    """Parse a block's JSON (shape only; ``verify_block`` checks it against its parent)."""
    if len(data) > MAX_BLOCK_BYTES:
        raise MalformedLedgerError("a ledger block is larger than 16 MiB")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedLedgerError("a ledger block is not valid JSON") from exc
    return block_from_dict(raw)


def block_from_dict(raw: object) -> LedgerBlock:
    if not isinstance(raw, dict):
        raise MalformedLedgerError("a ledger block must be a JSON object")
    if set(raw) != _FIELDS:
        raise MalformedLedgerError("a ledger block has missing or extra fields")
    if raw["v"] != 1 or isinstance(raw["v"], bool):
        raise MalformedLedgerError("a ledger block has an unknown format version")
    for name in ("height", "time", "difficulty"):
        value = raw[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
            raise MalformedLedgerError(f"ledger block field '{name}' must be an integer")
    for name in ("parent", "merkle", "signer", "sig"):
        if not isinstance(raw[name], str):
            raise MalformedLedgerError(f"ledger block field '{name}' must be a string")
    if not HEX64.match(raw["parent"]) or not HEX64.match(raw["merkle"]):
        raise MalformedLedgerError("ledger block hashes must be lowercase hex SHA-256")
    if not _DEVICE.match(raw["signer"]) or not (raw["sig"] == "" or _SIG.match(raw["sig"])):
        raise MalformedLedgerError("a ledger block's signer or signature is malformed")
    checkpoint, records = raw["checkpoint"], raw["records"]
    if not isinstance(checkpoint, list) or not all(
        isinstance(d, str) and _DEVICE.match(d) for d in checkpoint
    ):
        raise MalformedLedgerError("a ledger block's checkpoint must be a list of device ids")
    if not isinstance(records, list):
        raise MalformedLedgerError("a ledger block's records must be a list")
    return LedgerBlock(
        height=raw["height"],
        parent=raw["parent"],
        time=raw["time"],
        signer=raw["signer"],
        records=tuple(record_from_dict(r) for r in records),
        merkle=raw["merkle"],
        difficulty=raw["difficulty"],
        checkpoint=tuple(checkpoint),
        sig=raw["sig"],
    )


def _fields(b: LedgerBlock) -> dict[str, Any]:
    return {s: getattr(b, s) for s in LedgerBlock.__slots__ if s != "hash"}


__all__ = [
    "IN_TURN",
    "LEDGER_DOMAIN",
    "OUT_OF_TURN",
    "LedgerBlock",
    "block_from_dict",
    "block_json",
    "genesis_block",
    "is_checkpoint",
    "parse_block",
    "seal",
    "verify_block",
]
