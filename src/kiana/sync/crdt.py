"""Shared mutable state that merges without conflicts: an op-based CRDT, sans-I/O.

A mind's devices share small mutable things besides blocks: tags and pins,
device names, settings, counters, sets. ``SharedState`` holds them on one
replica (one device); replicas exchange *ops* and converge to the same state
whatever order ops arrive in, with duplicates and losses repaired by
state-vector anti-entropy.

Why our own CRDT and not pycrdt (Yrs)? Measured on this machine, pycrdt has no
counter or set type, gives ints back as floats, can lose an update applied
before the one it depends on unless the caller syncs by state vector and
pulls what is missing, and is quadratic for many inserts in one transaction.
What KI_ana needs is three textbook types over one op log, small enough to
read in one sitting, with exactly the semantics stated below and tested.

Semantics (each op is identified by its *dot* ``(replica, seq)``)::

    type        ops             merge rule
    register    set, del        last writer wins by (lamport, replica, seq);
                                del writes a tombstone, so a later set wins
                                and an earlier set never resurrects the key
    counter     incr            sum of all deltas (PN counter; ints stay ints)
    set         add, rem        observed-remove, add wins: rem removes only the
                                add-dots its replica had seen; a concurrent add
                                survives; rem of an unseen add does nothing

Delivery: every replica numbers its ops 1, 2, 3 ... and stamps them with a
Lamport clock. ``apply`` takes ops from any replica in any order: duplicates
are ignored, an op whose predecessor from the same replica is missing is held
(and persisted) until the gap fills, never lost and never applied out of
order. Across replicas no order is needed: registers and counters commute,
and a rem that arrives before an add it observed leaves a tombstone for that
dot, consumed when the add arrives. ``state_vector()`` says, per replica, the
highest contiguous seq applied; a peer answers with ``delta_since(sv)``;
``missing()`` names the replicas with gaps.

Wire format (``encode_ops``): UTF-8 JSON
``{"v":1,"replicas":[id,...],"ops":[[ri,seq,lamport,kind,key,...],...]}``
where ``ri`` indexes ``replicas`` and the op tail is ``value`` (set),
nothing (del), ``delta`` (incr), ``element`` (add) or ``element, [[replica,
seq],...]`` (rem). At most ``MAX_FRAME_BYTES`` and ``MAX_FRAME_OPS`` per
frame; use ``delta_since(sv, limit=...)`` to batch. Anything else is a
``FrameError``.

Limits: keys, counter and set names and elements are 1-256 characters;
register values are JSON (no NaN, string keys, ints within 64 bits) of at
most 64 KiB encoded; replica ids 1-64 characters; seq and lamport positive
64-bit. A replica id belongs to one device and one op log: a device restored
from an old backup must pull its own ops back before writing (``ConflictError``
until then) or take a new id. The op log is kept whole (no compaction yet).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, cast

from kiana.errors import ConflictError, FrameError, InputError, StoreError

if TYPE_CHECKING:
    from kiana.store.db import Conn, Database

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
OpKind = Literal["set", "del", "incr", "add", "rem"]
Dot: TypeAlias = tuple[str, int]
Stamp: TypeAlias = tuple[int, str, int]

FORMAT = 1
MAX_REPLICA_CHARS = 64
MAX_NAME_CHARS = 256
MAX_VALUE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
MAX_INT = 2**63 - 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_FRAME_OPS = 100_000
_ARITY = {"set": 1, "del": 0, "incr": 1, "add": 1, "rem": 2}  # body items after the key


# -- validation -----------------------------------------------------------------


def _name(what: str, value: object, limit: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InputError(f"{what} must be a string of 1 to {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid Unicode") from None
    return value


def _int(what: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InputError(f"{what} must be an integer from {low} to {high}")
    return value


def _check_json(value: object, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"value nests deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        _int("an integer in a value", value, -MAX_INT - 1, MAX_INT)
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


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def value_text(value: object) -> str:
    """Canonical compact JSON of a register value; ``InputError`` if it cannot be one."""
    _check_json(value, 0)
    text = _dumps(value)
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
    the element (add, rem); ``tags``: the add-dots a rem removes."""

    replica: str
    seq: int
    lamport: int
    kind: OpKind
    key: str
    value: Json = None
    tags: tuple[Dot, ...] = ()
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _name("replica id", self.replica, MAX_REPLICA_CHARS)
        _int("seq", self.seq, 1, MAX_INT)
        _int("lamport", self.lamport, 1, MAX_INT)
        _name("key", self.key)
        if self.kind not in _ARITY:
            raise InputError(f"unknown op kind {self.kind!r}")
        if self.kind == "set":
            object.__setattr__(self, "_text", value_text(self.value))
        elif self.kind == "del" and self.value is not None:
            raise InputError("a del op carries no value")
        elif self.kind == "incr":
            _int("counter delta", self.value, -MAX_INT, MAX_INT)
        elif self.kind in ("add", "rem"):
            _name("set element", self.value)
        if not isinstance(self.tags, tuple) or (self.tags and self.kind != "rem"):
            raise InputError("only a rem op carries tags, as a tuple")
        for tag in self.tags:
            if not isinstance(tag, tuple) or len(tag) != 2:
                raise InputError("a tag is a (replica, seq) pair")
            _name("tag replica id", tag[0], MAX_REPLICA_CHARS)
            _int("tag seq", tag[1], 1, MAX_INT)

    @property
    def dot(self) -> Dot:
        return (self.replica, self.seq)

    @property
    def stamp(self) -> Stamp:
        """Total order for last-writer-wins: Lamport time, then replica id, then seq."""
        return (self.lamport, self.replica, self.seq)


def _body(op: Op) -> list[Json]:
    """The op without replica, seq and lamport, as a JSON list."""
    body: list[Json] = [op.kind, op.key]
    if op.kind != "del":
        body.append(op.value)
    if op.kind == "rem":
        body.append([[r, s] for r, s in op.tags])
    return body


def _from_body(replica: object, seq: object, lamport: object, body: object) -> Op:
    """Rebuild an op; ``InputError`` for anything malformed."""
    if not isinstance(body, list) or len(body) < 2:
        raise InputError("an op body is a list [kind, key, ...]")
    kind, key, rest = body[0], body[1], body[2:]
    if not isinstance(kind, str) or _ARITY.get(kind, -1) != len(rest):
        raise InputError("an op body has the wrong kind or length")
    tags: tuple[Dot, ...] = ()
    if kind == "rem":
        raw = rest[1]
        if not isinstance(raw, list) or not all(isinstance(t, list) and len(t) == 2 for t in raw):
            raise InputError("rem tags are [[replica, seq], ...]")
        tags = tuple((t[0], t[1]) for t in raw)
    return Op(
        cast(str, replica),
        cast(int, seq),
        cast(int, lamport),
        cast(OpKind, kind),
        cast(str, key),
        rest[0] if rest else None,
        tags,
    )


# -- encoding -----------------------------------------------------------------------


def encode_ops(ops: Iterable[Op]) -> bytes:
    """One frame of ops; ``FrameError`` if it would exceed the frame limits."""
    replicas: dict[str, int] = {}
    rows: list[Json] = []
    for op in ops:
        index = replicas.setdefault(op.replica, len(replicas))
        rows.append([index, op.seq, op.lamport, *_body(op)])
    if len(rows) > MAX_FRAME_OPS:
        raise FrameError(f"{len(rows)} ops exceed {MAX_FRAME_OPS} per frame; send fewer at once")
    data = _dumps({"v": FORMAT, "replicas": list(replicas), "ops": rows}).encode("utf-8")
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"{len(data)} bytes exceed the {MAX_FRAME_BYTES}-byte frame limit")
    return data


def _loads(data: object, what: str) -> object:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"{what} must be bytes")
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"{what} of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")

    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"{what} is not valid UTF-8 JSON") from exc


def decode_ops(data: bytes) -> list[Op]:
    """The ops of a frame made by ``encode_ops``; ``FrameError`` if malformed."""
    frame = _loads(data, "an op frame")
    if not isinstance(frame, dict) or set(frame) != {"v", "replicas", "ops"}:
        raise FrameError('an op frame is {"v", "replicas", "ops"}')
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
            _name("replica id", name, MAX_REPLICA_CHARS)
        for row in rows:
            if not isinstance(row, list) or len(row) < 5:
                raise InputError("an op is [replica, seq, lamport, kind, key, ...]")
            index = _int("replica index", row[0], 0, len(replicas) - 1)
            ops.append(_from_body(replicas[index], row[1], row[2], row[3:]))
    except InputError as exc:
        raise FrameError(f"malformed op frame: {exc.message}") from exc
    return ops


def encode_state_vector(sv: Mapping[str, int]) -> bytes:
    return _dumps(dict(_state_vector(sv))).encode("utf-8")


def decode_state_vector(data: bytes) -> dict[str, int]:
    value = _loads(data, "a state vector")
    try:
        return _state_vector(value)
    except InputError as exc:
        raise FrameError(f"malformed state vector: {exc.message}") from exc


def _state_vector(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InputError("a state vector maps replica ids to seqs")
    return {
        _name("replica id", r, MAX_REPLICA_CHARS): _int("seq", s, 0, MAX_INT)
        for r, s in value.items()
    }


# -- persistence --------------------------------------------------------------------


class OpStore(Protocol):
    """Where a replica's op log lives: applied ops and held ones (waiting for a gap)."""

    def load(self) -> list[tuple[Op, bool]]:
        """Every stored op and whether it is held, in (replica, seq) order."""
        ...

    def save(self, applied: Sequence[Op], held: Sequence[Op]) -> None:
        """Record ``applied`` (some may be stored as held until now) and new ``held``
        ops, in one transaction."""
        ...


class MemoryOpStore:
    """An op log in a dict: survives a ``SharedState`` but not the process."""

    def __init__(self) -> None:
        self._ops: dict[Dot, tuple[Op, bool]] = {}

    def load(self) -> list[tuple[Op, bool]]:
        return [self._ops[dot] for dot in sorted(self._ops)]

    def save(self, applied: Sequence[Op], held: Sequence[Op]) -> None:
        for op in applied:
            self._ops[op.dot] = (op, False)
        for op in held:
            self._ops.setdefault(op.dot, (op, True))


_SAVE_APPLIED = (
    "INSERT INTO crdt_ops (replica, seq, lamport, op, held) VALUES (?, ?, ?, ?, 0)"
    " ON CONFLICT (replica, seq) DO UPDATE SET held = 0"
)
_SAVE_HELD = (
    "INSERT INTO crdt_ops (replica, seq, lamport, op, held) VALUES (?, ?, ?, ?, 1)"
    " ON CONFLICT (replica, seq) DO NOTHING"
)


class SqlOpStore:
    """The ``crdt_ops`` table (migration 6) of a migrated ``Database`` the caller owns."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self) -> list[tuple[Op, bool]]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT replica, seq, lamport, op, held FROM crdt_ops ORDER BY replica, seq"
            )
        )
        out: list[tuple[Op, bool]] = []
        for replica, seq, lamport, text, held in rows:
            try:
                op = _from_body(replica, int(seq), int(lamport), json.loads(text))
            except (ValueError, RecursionError, InputError) as exc:
                raise StoreError(f"corrupt op {seq} of replica {replica} in crdt_ops") from exc
            out.append((op, bool(held)))
        return out

    def save(self, applied: Sequence[Op], held: Sequence[Op]) -> None:
        def row(op: Op) -> tuple[str, int, int, str]:
            return (op.replica, op.seq, op.lamport, _dumps(_body(op)))

        def write(conn: Conn) -> None:
            conn.executemany(_SAVE_APPLIED, [row(op) for op in applied])
            conn.executemany(_SAVE_HELD, [row(op) for op in held])

        if applied or held:
            self.db.write(write)


# -- state --------------------------------------------------------------------------


class SharedState:
    """One replica's view of the shared state; see the module docstring."""

    def __init__(self, replica: str, *, store: OpStore | None = None) -> None:
        self.replica = _name("replica id", replica, MAX_REPLICA_CHARS)
        self._store = store
        self._log: dict[str, list[Op]] = {}  # applied ops per replica; seq n at [n - 1]
        self._held: dict[str, dict[int, Op]] = {}
        self._clock = 0
        self._registers: dict[str, tuple[Stamp, str | None]] = {}
        self._counters: dict[str, int] = {}
        self._sets: dict[str, dict[str, set[Dot]]] = {}
        self._removed: set[tuple[str, str, str, int]] = set()  # rems ahead of their adds
        if store is not None:
            self._ingest(op for op, _held in store.load())

    # -- registers --

    def set(self, key: str, value: object) -> Op:
        """Write ``value`` (JSON: checked here, copied) under ``key``."""
        return self._local("set", key, json.loads(value_text(value)))

    def delete(self, key: str) -> Op:
        return self._local("del", key)

    def get(self, key: str, default: Json = None) -> Json:
        entry = self._registers.get(key)
        if entry is None or entry[1] is None:
            return default
        return cast(Json, json.loads(entry[1]))

    def items(self, prefix: str = "") -> list[tuple[str, Json]]:
        """Live keys starting with ``prefix`` and their values, sorted by key."""
        return [
            (key, cast(Json, json.loads(text)))
            for key, (_stamp, text) in sorted(self._registers.items())
            if text is not None and key.startswith(prefix)
        ]

    # -- counters --

    def incr(self, name: str, delta: int = 1) -> Op:
        return self._local("incr", name, delta)

    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    # -- observed-remove sets --

    def add(self, set_name: str, element: str) -> Op:
        return self._local("add", set_name, element)

    def remove(self, set_name: str, element: str) -> Op | None:
        """Remove the adds of ``element`` seen so far; None (no op) if there are none."""
        _name("set element", element)
        dots = self._sets.get(_name("key", set_name), {}).get(element)
        if not dots:
            return None
        return self._local("rem", set_name, element, tuple(sorted(dots)))

    def members(self, set_name: str) -> frozenset[str]:
        return frozenset(self._sets.get(set_name, ()))

    # -- sync --

    def state_vector(self) -> dict[str, int]:
        """Per replica, the highest seq up to which every op has been applied."""
        return {replica: len(log) for replica, log in self._log.items()}

    def missing(self) -> dict[str, int]:
        """Per replica with held ops, the first seq that is missing (pull from there)."""
        return {replica: len(self._log.get(replica, ())) + 1 for replica in self._held}

    def held_count(self) -> int:
        return sum(len(ops) for ops in self._held.values())

    def delta_since(self, sv: Mapping[str, int], limit: int | None = None) -> list[Op]:
        """Applied ops the owner of ``sv`` lacks, earliest Lamport time first (so each
        replica's ops come in seq order); at most ``limit`` of them."""
        sv = _state_vector(sv)
        if limit is not None:
            _int("limit", limit, 0, MAX_INT)
        runs: list[Iterator[Op]] = [
            _tail(log, sv.get(replica, 0))
            for replica, log in self._log.items()
            if sv.get(replica, 0) < len(log)
        ]
        merged = heapq.merge(*runs, key=lambda op: op.stamp)
        return list(merged if limit is None else islice(merged, limit))

    def apply(self, ops: Iterable[Op]) -> int:
        """Take ops from peers in any order; return how many were applied now."""
        batch = list(ops)
        if not all(isinstance(op, Op) for op in batch):
            raise InputError("apply takes Op objects")
        applied, held = self._ingest(batch)
        if self._store is not None:
            self._store.save(applied, held)
        return len(applied)

    # -- internals --

    def _local(self, kind: OpKind, key: str, value: Json = None, tags: tuple[Dot, ...] = ()) -> Op:
        if self.replica in self._held:
            raise ConflictError(
                f"replica {self.replica} has a gap in its own ops; pull them before writing"
            )
        seq = len(self._log.get(self.replica, ())) + 1
        op = Op(self.replica, seq, self._clock + 1, kind, key, value, tags)
        if self._store is not None:
            self._store.save([op], [])  # durable before anyone can see it
        self._ingest([op])
        return op

    def _ingest(self, ops: Iterable[Op]) -> tuple[list[Op], list[Op]]:
        """Apply what is next in line, hold what is early, drop what is known."""
        applied: list[Op] = []
        new_held: dict[Dot, Op] = {}
        for op in ops:
            log = self._log.get(op.replica)
            done = len(log) if log is not None else 0
            if op.seq <= done:
                continue
            if op.seq > done + 1:
                waiting = self._held.setdefault(op.replica, {})
                if op.seq not in waiting:
                    waiting[op.seq] = new_held[op.dot] = op
                continue
            self._apply_one(op)
            applied.append(op)
            queued = self._held.get(op.replica)
            if queued is not None:
                following = queued.pop(op.seq + 1, None)
                while following is not None:
                    self._apply_one(following)
                    applied.append(following)
                    new_held.pop(following.dot, None)
                    following = queued.pop(following.seq + 1, None)
                if not queued:
                    del self._held[op.replica]
        return applied, list(new_held.values())

    def _apply_one(self, op: Op) -> None:
        self._log.setdefault(op.replica, []).append(op)
        self._clock = max(self._clock, op.lamport)
        if op.kind in ("set", "del"):
            current = self._registers.get(op.key)
            if current is None or op.stamp > current[0]:
                self._registers[op.key] = (op.stamp, op._text)
        elif op.kind == "incr":
            self._counters[op.key] = self._counters.get(op.key, 0) + cast(int, op.value)
        elif op.kind == "add":
            element = cast(str, op.value)
            tomb = (op.key, element, op.replica, op.seq)
            if tomb in self._removed:
                self._removed.discard(tomb)
            else:
                self._sets.setdefault(op.key, {}).setdefault(element, set()).add(op.dot)
        else:
            self._remove(op.key, cast(str, op.value), op.tags)

    def _remove(self, set_name: str, element: str, tags: tuple[Dot, ...]) -> None:
        elements = self._sets.get(set_name, {})
        dots = elements.get(element, set())
        for replica, seq in tags:
            if seq <= len(self._log.get(replica, ())):
                dots.discard((replica, seq))  # (a no-op for an add of another element)
            else:
                self._removed.add((set_name, element, replica, seq))
        if not dots:
            elements.pop(element, None)
            if not elements:
                self._sets.pop(set_name, None)


def _tail(log: list[Op], start: int) -> Iterator[Op]:
    return (log[i] for i in range(start, len(log)))
