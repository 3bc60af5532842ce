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

Signatures: every op carries the Ed25519 signature of the device whose id is its
replica (``crdt_wire``: domain ``kiana:crdt-op:v1``, over every field). A local
write is signed when it is made (``signer``); ``receive`` checks each new op from a
peer against the mind's member directory before applying or holding it, and refuses
forged, unknown, badly signed ops and new ops of a revoked device sent by that
device itself (``crdt_members`` states the rules and why they converge). Refused
ops are returned as ``Refusal`` records; they are never applied, stored or sent on.

Equivocation: a replica that signs two different ops for one dot is caught when
both reach one device (``receive``: the second verifies but differs; peers compare log
digests, ``crdt_digest``, so that they do). Every device keeps, for that dot, the op
with the lower ``op_hash`` (SHA-256 of its signed encoding), whatever order they came
in, and rebuilds its state if the other had been applied; it keeps the other op as the
proof (``proof``) and reports the dot (``Received.equivocated``, refusal code
``equivocation``) so that its gossip forwards both ops. docs/sync.md has the argument.

Wire format: ``crdt_wire`` (version 2, signed; version 1 frames are refused).
Storage: ``crdt_store`` (``crdt_ops``, with the signature since migration 8; the
proofs of equivocation in ``crdt_proofs``, migration 9).

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import cast

from nacl.signing import SigningKey

from kiana.errors import ConflictError, InputError, KianaError
from kiana.sync.crdt_digest import CHUNK, chunk_digest, log_digest
from kiana.sync.crdt_members import Directory, Refusal, ReplicaKey, check_op
from kiana.sync.crdt_store import MemoryOpStore, OpStore, SqlOpStore
from kiana.sync.crdt_wire import (
    FORMAT,
    MAX_FRAME_BYTES,
    MAX_FRAME_OPS,
    MAX_INT,
    MAX_REPLICA_CHARS,
    Dot,
    Json,
    Op,
    OpKind,
    Stamp,
    check_int,
    check_name,
    decode_ops,
    decode_state_vector,
    encode_ops,
    encode_state_vector,
    op_hash,
    sign_op,
    state_vector,
    value_text,
    verify_op,
)


@dataclass(frozen=True, slots=True)
class Received:
    """What ``receive`` did with a batch: ops applied now, the ops refused, the dots
    whose pair of equivocating ops changed here (new proof or new winner: send both to
    every peer), and the dots for which the batch carried only an op not kept here (the
    sender may hold it: send it both)."""

    applied: int
    refused: tuple[Refusal, ...] = ()
    equivocated: tuple[Dot, ...] = ()
    outdated: tuple[Dot, ...] = ()


# -- state --------------------------------------------------------------------------


class SharedState:
    """One replica's view of the shared state; see the module docstring."""

    def __init__(
        self,
        replica: str,
        *,
        signer: SigningKey | None = None,
        directory: Directory | None = None,
        store: OpStore | None = None,
    ) -> None:
        """``signer``: this device's key (needed to write); ``directory``: the mind's
        members (needed to take ops from peers); ``store``: the op log to load and keep."""
        self.replica = check_name("replica id", replica, MAX_REPLICA_CHARS)
        self._signer = signer
        self._directory = directory
        self._store = store
        self._log: dict[str, list[Op]] = {}  # applied ops per replica; seq n at [n - 1]
        self._held: dict[str, dict[int, Op]] = {}
        self._clock = 0
        self._registers: dict[str, tuple[Stamp, str | None]] = {}
        self._counters: dict[str, int] = {}
        self._sets: dict[str, dict[str, set[Dot]]] = {}
        self._removed: set[tuple[str, str, str, int]] = set()  # rems ahead of their adds
        self._hashes: dict[str, list[bytes]] = {}  # op_hash of each applied op, per replica
        self._chunks: dict[str, list[bytes]] = {}  # digests of complete chunks, per replica
        self._proofs: dict[Dot, Op] = {}  # equivocated dot -> the other op (not the winner)
        self.version = 0  # counts changes to the applied ops (their digests)
        if store is not None:
            self._ingest(self._load(store))
            self._proofs = {op.dot: op for op in store.load_proofs()}

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
        check_name("set element", element)
        dots = self._sets.get(check_name("key", set_name), {}).get(element)
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

    def is_member(self, replica: str) -> bool:
        """Whether the member directory knows ``replica`` (False without a directory)."""
        return self._directory is not None and self._directory(replica) is not None

    def held_count(self) -> int:
        return sum(len(ops) for ops in self._held.values())

    def op_at(self, dot: Dot) -> Op | None:
        """The op applied or held for ``dot`` (the winner, if it was equivocated)."""
        replica, seq = dot
        log = self._log.get(replica)
        if log is not None and seq <= len(log):
            return log[seq - 1]
        return self._held.get(replica, {}).get(seq)

    def ops_of(self, replica: str, first: int, last: int) -> list[Op]:
        """The applied ops ``first``..``last`` of ``replica`` (as far as applied)."""
        return self._log.get(replica, [])[max(first, 1) - 1 : last]

    def equivocations(self) -> dict[Dot, tuple[Op, Op]]:
        """Per dot known to be equivocated: (the op kept, the other op seen)."""
        out: dict[Dot, tuple[Op, Op]] = {}
        for dot, other in sorted(self._proofs.items()):
            kept = self.op_at(dot)
            if kept is not None:
                out[dot] = (kept, other)
        return out

    def chunk_digests(self, replica: str, seq: int) -> list[bytes]:
        """Digests of the applied ops 1..``seq`` of ``replica`` by ``CHUNK`` (``crdt_digest``)."""
        hashes = self._hashes.get(replica, [])
        if not 0 <= seq <= len(hashes):
            raise InputError(f"replica {replica} has no applied op {seq}")
        full = seq // CHUNK
        out = self._chunks.get(replica, [])[:full]
        if seq % CHUNK:
            out.append(chunk_digest(hashes[full * CHUNK : seq]))
        return out

    def digest(self, replica: str, seq: int) -> bytes:
        """Digest of the applied ops 1..``seq`` of ``replica``."""
        return log_digest(self.chunk_digests(replica, seq))

    def delta_since(self, sv: Mapping[str, int], limit: int | None = None) -> list[Op]:
        """Applied ops the owner of ``sv`` lacks, earliest Lamport time first (so each
        replica's ops come in seq order); at most ``limit`` of them."""
        sv = state_vector(sv)
        if limit is not None:
            check_int("limit", limit, 0, MAX_INT)
        runs: list[Iterator[Op]] = [
            _tail(log, sv.get(replica, 0))
            for replica, log in self._log.items()
            if sv.get(replica, 0) < len(log)
        ]
        merged = heapq.merge(*runs, key=lambda op: op.stamp)
        return list(merged if limit is None else islice(merged, limit))

    def apply(self, ops: Iterable[Op], *, sender: str | None = None) -> int:
        """``receive`` that returns how many ops were applied now."""
        return self.receive(ops, sender=sender).applied

    def receive(self, ops: Iterable[Op], *, sender: str | None = None) -> Received:
        """Take ops from a peer (``sender``: its device id) in any order. Each op new here
        is checked against the member directory first (``crdt_members``): the refused
        ones are returned, never applied, stored or sent on; duplicates are dropped."""
        batch = list(ops)
        if not all(isinstance(op, Op) for op in batch):
            raise InputError("apply takes Op objects")
        if self._directory is None:
            raise ConflictError("this replica has no member directory; it cannot check ops")
        checked: dict[Dot, Op] = {}
        others: list[Op] = []  # valid ops for dots that have another op here
        refused: list[Refusal] = []
        stale: dict[Dot, None] = {}  # dots for which the batch has an op not kept here
        for op in batch:
            current = self.op_at(op.dot) or checked.get(op.dot)
            if current == op:
                continue
            if current is not None and self._proofs.get(op.dot) == op:
                stale[op.dot] = None
                continue
            try:
                check_op(op, self._directory, sender)
            except KianaError as exc:
                refused.append(Refusal(op.label, exc.code, exc.message))
                continue
            if current is None:
                checked[op.dot] = op
            else:
                others.append(op)
        applied, held = self._ingest(checked.values())
        if self._store is not None:
            self._store.save(applied, held)
        equivocated: dict[Dot, None] = {}
        for op in others:
            stale[op.dot] = None
            if self._equivocation(op):
                equivocated[op.dot] = None
            refused.append(
                Refusal(
                    op.label,
                    "equivocation",
                    f"device {op.replica} signed two different ops as {op.label}; "
                    "every device keeps the one with the lower hash",
                )
            )
        sent = {op.sig for op in batch}
        outdated = tuple(d for d in stale if d not in equivocated and self._sig_at(d) not in sent)
        return Received(len(applied), tuple(refused), tuple(equivocated), outdated)

    # -- internals --

    def _sig_at(self, dot: Dot) -> bytes:
        op = self.op_at(dot)
        return b"" if op is None else op.sig

    def _equivocation(self, op: Op) -> bool:
        """Take ``op``, valid but not the op here for its dot: the lower ``op_hash`` wins,
        the other is kept as the proof. True if the pair for the dot changed."""
        current = self.op_at(op.dot)
        assert current is not None
        if current == op or self._proofs.get(op.dot) == op:
            return False  # (a batch can carry the same op twice)
        if op_hash(op) < op_hash(current):
            self._proofs[op.dot] = current
            if self._store is not None:
                self._store.equivocation(op, current)
            held = self._held.get(op.replica)
            if held is not None and op.seq in held:
                held[op.seq] = op
            else:
                self._log[op.replica][op.seq - 1] = op
                self._rebuild()
            return True
        if op.dot in self._proofs:
            return False  # a third op for the dot: reported, the pair kept
        self._proofs[op.dot] = op
        if self._store is not None:
            self._store.equivocation(None, op)
        return True

    def _rebuild(self) -> None:
        """Recompute the state from the applied ops (after one of them was replaced)."""
        logs = self._log
        self._log, self._hashes, self._chunks = {}, {}, {}
        self._registers, self._counters, self._sets, self._removed = {}, {}, {}, set()
        for log in logs.values():
            for op in log:
                self._apply_one(op)

    def _load(self, store: OpStore) -> list[Op]:
        """The stored ops; unsigned ones (stored before signatures) repaired: this
        replica's signed now, other replicas' forgotten (their devices resend them)."""
        ops: list[Op] = []
        signed: list[Op] = []
        dropped: list[Dot] = []
        for op, _held in store.load():
            if op.sig:
                ops.append(op)
            elif op.replica != self.replica:
                dropped.append(op.dot)
            elif self._signer is not None:
                signed.append(sign_op(self._signer, op))
                ops.append(signed[-1])
            else:
                ops.append(op)  # read-only use without the key: signed when it has one
        store.repair(signed, dropped)
        return ops

    def _local(self, kind: OpKind, key: str, value: Json = None, tags: tuple[Dot, ...] = ()) -> Op:
        if self._signer is None:
            raise ConflictError("this replica has no signing key; it cannot write")
        if self.replica in self._held:
            raise ConflictError(
                f"replica {self.replica} has a gap in its own ops; pull them before writing"
            )
        seq = len(self._log.get(self.replica, ())) + 1
        op = sign_op(self._signer, Op(self.replica, seq, self._clock + 1, kind, key, value, tags))
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
        hashes = self._hashes.setdefault(op.replica, [])
        hashes.append(op_hash(op))
        if len(hashes) % CHUNK == 0:
            self._chunks.setdefault(op.replica, []).append(chunk_digest(hashes[-CHUNK:]))
        self.version += 1
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


__all__ = [
    "FORMAT",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_OPS",
    "Directory",
    "Dot",
    "Json",
    "MemoryOpStore",
    "Op",
    "OpKind",
    "OpStore",
    "Received",
    "Refusal",
    "ReplicaKey",
    "SharedState",
    "SqlOpStore",
    "Stamp",
    "decode_ops",
    "decode_state_vector",
    "encode_ops",
    "encode_state_vector",
    "sign_op",
    "value_text",
    "verify_op",
]
