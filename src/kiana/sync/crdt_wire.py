"""CRDT ops as values, their wire frames and their signatures (no state, no I/O).

An ``Op`` is one change by one replica (a device): ``(replica, seq, lamport, kind,
key, value, tags)`` plus ``sig``, the Ed25519 signature of the device whose id is
``replica``. The signature is over ``OP_DOMAIN || sha256(canonical)``, where
``canonical`` is the UTF-8 compact JSON (object keys sorted, no NaN) of the list
``[replica, seq, lamport, kind, key, *tail]`` and ``tail`` is ``value`` (set),
nothing (del), ``delta`` (incr), ``element`` (add) or ``element, [[replica, seq],
...]`` (rem): every field of the op, in one encoding, under a domain string no
other signed record of KI_ana uses (``kiana:block:v1``, ``kiana:tombstone:v1``,
``kiana:membership:v1``, ``kiana:genesis:v1``, ``kiana:ledger:v1``).

Wire format (``encode_ops``), version 2: UTF-8 JSON
``{"v":2,"replicas":[id,...],"ops":[[ri,seq,lamport,sig,kind,key,...],...]}``
where ``ri`` indexes ``replicas``, ``sig`` is the signature in 128 lowercase hex
characters and the op tail is as above. Version 1 frames (no signatures) are
refused with a ``FrameError``, as is anything malformed or unsigned. At most
``MAX_FRAME_BYTES`` and ``MAX_FRAME_OPS`` per frame.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from copy import copy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, TypeAlias, cast

from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from kiana.errors import BadSignatureError, FrameError, InputError

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
OpKind = Literal["set", "del", "incr", "add", "rem"]
Dot: TypeAlias = tuple[str, int]
Stamp: TypeAlias = tuple[int, str, int]

FORMAT = 2  # 1: unsigned ops (refused since signatures came in)
OP_DOMAIN = b"kiana:crdt-op:v1\x00"
SIG_BYTES = 64
MAX_REPLICA_CHARS = 64
MAX_NAME_CHARS = 256
MAX_VALUE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
MAX_INT = 2**63 - 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_FRAME_OPS = 100_000
ARITY = {"set": 1, "del": 0, "incr": 1, "add": 1, "rem": 2}  # body items after the key


# -- validation -----------------------------------------------------------------


def check_name(what: str, value: object, limit: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InputError(f"{what} must be a string of 1 to {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid Unicode") from None
    return value


def check_int(what: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InputError(f"{what} must be an integer from {low} to {high}")
    return value


def _check_json(value: object, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"value nests deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        check_int("an integer in a value", value, -MAX_INT - 1, MAX_INT)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InputError("values cannot hold NaN or infinity")
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InputError("object keys in a value must be strings")
            _check_json(item, depth + 1)
    else:
        raise InputError(f"a value of type {type(value).__name__} is not JSON")


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_CANONICAL = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
)


def dumps(value: object, *, sort_keys: bool = False) -> str:
    """Compact JSON (``sort_keys``: with object keys sorted, the signed form)."""
    return (_CANONICAL if sort_keys else _COMPACT).encode(value)


def value_text(value: object) -> str:
    """Canonical compact JSON of a register value; ``InputError`` if it cannot be one."""
    _check_json(value, 0)
    text = dumps(value)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError("value is not valid Unicode") from None
    if size > MAX_VALUE_BYTES:
        raise InputError(f"value is {size} bytes encoded; the limit is {MAX_VALUE_BYTES}")
    return text


# -- ops ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One change by one replica. ``value``: the JSON value (set), the delta (incr) or
    the element (add, rem); ``tags``: the add-dots a rem removes; ``sig``: the
    replica's signature (``b""`` only for an op not signed yet, which no frame carries)."""

    replica: str
    seq: int
    lamport: int
    kind: OpKind
    key: str
    value: Json = None
    tags: tuple[Dot, ...] = ()
    sig: bytes = b""
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name("replica id", self.replica, MAX_REPLICA_CHARS)
        check_int("seq", self.seq, 1, MAX_INT)
        check_int("lamport", self.lamport, 1, MAX_INT)
        check_name("key", self.key)
        if self.kind not in ARITY:
            raise InputError(f"unknown op kind {self.kind!r}")
        if self.kind == "set":
            object.__setattr__(self, "_text", value_text(self.value))
        elif self.kind == "del" and self.value is not None:
            raise InputError("a del op carries no value")
        elif self.kind == "incr":
            check_int("counter delta", self.value, -MAX_INT, MAX_INT)
        elif self.kind in ("add", "rem"):
            check_name("set element", self.value)
        if not isinstance(self.tags, tuple) or (self.tags and self.kind != "rem"):
            raise InputError("only a rem op carries tags, as a tuple")
        for tag in self.tags:
            if not isinstance(tag, tuple) or len(tag) != 2:
                raise InputError("a tag is a (replica, seq) pair")
            check_name("tag replica id", tag[0], MAX_REPLICA_CHARS)
            check_int("tag seq", tag[1], 1, MAX_INT)
        if not isinstance(self.sig, bytes) or len(self.sig) not in (0, SIG_BYTES):
            raise InputError(f"an op signature is {SIG_BYTES} bytes")

    @property
    def dot(self) -> Dot:
        return (self.replica, self.seq)

    @property
    def stamp(self) -> Stamp:
        """Total order for last-writer-wins: Lamport time, then replica id, then seq."""
        return (self.lamport, self.replica, self.seq)

    @property
    def label(self) -> str:
        """``replica:seq``, how logs and refusal records name the op."""
        return f"{self.replica}:{self.seq}"


def body(op: Op) -> list[Json]:
    """The op without replica, seq and lamport, as a JSON list."""
    out: list[Json] = [op.kind, op.key]
    if op.kind != "del":
        out.append(op.value)
    if op.kind == "rem":
        out.append([[r, s] for r, s in op.tags])
    return out


def from_body(replica: object, seq: object, lamport: object, raw: object, sig: bytes) -> Op:
    """Rebuild an op; ``InputError`` for anything malformed."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError("an op body is a list [kind, key, ...]")
    kind, key, rest = raw[0], raw[1], raw[2:]
    if not isinstance(kind, str) or ARITY.get(kind, -1) != len(rest):
        raise InputError("an op body has the wrong kind or length")
    tags: tuple[Dot, ...] = ()
    if kind == "rem":
        tag_list = rest[1]
        if not isinstance(tag_list, list) or not all(
            isinstance(t, list) and len(t) == 2 for t in tag_list
        ):
            raise InputError("rem tags are [[replica, seq], ...]")
        tags = tuple((t[0], t[1]) for t in tag_list)
    return Op(
        cast(str, replica),
        cast(int, seq),
        cast(int, lamport),
        cast(OpKind, kind),
        cast(str, key),
        rest[0] if rest else None,
        tags,
        sig,
    )


# -- signatures ---------------------------------------------------------------------


def signed_message(op: Op) -> bytes:
    """What the replica signs: the domain and the SHA-256 of the op's canonical bytes."""
    canonical = dumps([op.replica, op.seq, op.lamport, *body(op)], sort_keys=True)
    return OP_DOMAIN + hashlib.sha256(canonical.encode("utf-8")).digest()


def sign_op(key: SigningKey, op: Op) -> Op:
    """``op`` with the signature of ``key`` (the key of the device ``op.replica``)."""
    signed = copy(op)  # already validated: only the signature changes
    object.__setattr__(signed, "sig", key.sign(signed_message(op)).signature)
    return signed


def op_hash(op: Op) -> bytes:
    """SHA-256 of the op's signed encoding (the signed message and the signature): what
    log digests are made of, and the order that picks one of two ops signed for one dot
    (the lower wins; ``SharedState``)."""
    return hashlib.sha256(signed_message(op) + op.sig).digest()


@lru_cache(maxsize=1024)
def _verify_key(raw: bytes) -> VerifyKey:
    return VerifyKey(raw)


def verify_op(op: Op, public_key: bytes) -> None:
    """``BadSignatureError`` unless ``op.sig`` is the signature of ``public_key``."""
    if len(op.sig) != SIG_BYTES:
        raise BadSignatureError(f"op {op.label} is not signed")
    try:
        _verify_key(public_key).verify(signed_message(op), op.sig)
    except NaclBadSignature:
        raise BadSignatureError(
            f"op {op.label} is not signed by the key of device {op.replica}"
        ) from None
    except (CryptoError, TypeError, ValueError) as exc:
        raise BadSignatureError(f"the key of device {op.replica} is unusable") from exc


# -- encoding -----------------------------------------------------------------------


def encode_ops(ops: Iterable[Op]) -> bytes:
    """One frame of signed ops; ``FrameError`` if it would exceed the frame limits or
    an op is unsigned."""
    replicas: dict[str, int] = {}
    rows: list[Json] = []
    for op in ops:
        if not op.sig:
            raise FrameError(f"op {op.label} is unsigned; only signed ops are sent")
        index = replicas.setdefault(op.replica, len(replicas))
        rows.append([index, op.seq, op.lamport, op.sig.hex(), *body(op)])
    if len(rows) > MAX_FRAME_OPS:
        raise FrameError(f"{len(rows)} ops exceed {MAX_FRAME_OPS} per frame; send fewer at once")
    data = dumps({"v": FORMAT, "replicas": list(replicas), "ops": rows}).encode("utf-8")
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"{len(data)} bytes exceed the {MAX_FRAME_BYTES}-byte frame limit")
    return data


def loads(data: object, what: str) -> object:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"{what} must be bytes")
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"{what} of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")

    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"{what} is not valid UTF-8 JSON (truncated?)") from exc


def _sig(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * SIG_BYTES:
        raise InputError(f"an op signature is {2 * SIG_BYTES} hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InputError("an op signature is hex") from None


def decode_ops(data: bytes) -> list[Op]:
    """The ops of a frame made by ``encode_ops``; ``FrameError`` if malformed. The
    signatures are read, not checked: ``SharedState.receive`` checks them."""
    frame = loads(data, "an op frame")
    if not isinstance(frame, dict) or set(frame) != {"v", "replicas", "ops"}:
        raise FrameError('an op frame is {"v", "replicas", "ops"}')
    if frame["v"] == 1 and type(frame["v"]) is int:
        raise FrameError("op frame format 1 carries unsigned ops; the sender must upgrade")
    if frame["v"] != FORMAT or type(frame["v"]) is not int:
        raise FrameError(f"unknown op frame format {frame['v']!r}")
    replicas, rows = frame["replicas"], frame["ops"]
    if not isinstance(replicas, list) or not isinstance(rows, list):
        raise FrameError("replicas and ops must be lists")
    if len(rows) > MAX_FRAME_OPS or len(replicas) > len(rows):
        raise FrameError("an op frame lists too many ops or replicas")
    ops: list[Op] = []
    try:
        for name in replicas:
            check_name("replica id", name, MAX_REPLICA_CHARS)
        for row in rows:
            if not isinstance(row, list) or len(row) < 6:
                raise InputError("an op is [replica, seq, lamport, sig, kind, key, ...]")
            index = check_int("replica index", row[0], 0, len(replicas) - 1)
            ops.append(from_body(replicas[index], row[1], row[2], row[4:], _sig(row[3])))
    except InputError as exc:
        raise FrameError(f"malformed op frame: {exc.message}") from exc
    return ops


def encode_state_vector(sv: Mapping[str, int]) -> bytes:
    return dumps(dict(state_vector(sv))).encode("utf-8")


def decode_state_vector(data: bytes) -> dict[str, int]:
    value = loads(data, "a state vector")
    try:
        return state_vector(value)
    except InputError as exc:
        raise FrameError(f"malformed state vector: {exc.message}") from exc


def state_vector(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InputError("a state vector maps replica ids to seqs")
    return {
        check_name("replica id", r, MAX_REPLICA_CHARS): check_int("seq", s, 0, MAX_INT)
        for r, s in value.items()
    }
