"""Digests of the op log, so that peers find ops that differ under one dot (sans-I/O).

A state vector says how many ops of each replica a device has applied, not which. Two
devices that took different ops for one dot (a replica that *equivocated*: signed two
ops with one ``(replica, seq)`` and sent each to other devices) have equal vectors, and
state-vector anti-entropy never shows either of them the other op. So peers also
compare digests of what they applied (``StateGossip`` sends them):

* ``H`` message: per replica, ``[seq, digest]``: the digest of the replica's first
  ``seq`` applied ops. A peer that has applied at least ``seq`` ops of that replica
  compares its own digest at ``seq`` and, where they differ, answers with
* ``C`` message: per replica, ``[seq, [chunk digest, ...]]``: the digests of the same
  ops in chunks of ``CHUNK`` (1-64, 65-128, ..., the last one partial). The peer
  answers with its own ops of the first ``MAX_DIFF_CHUNKS`` chunks that differ (``O``
  frames), which ``SharedState.receive`` compares op by op; an op that differs from
  the one applied for its dot and verifies is a proof of equivocation.

A chunk digest is the first 16 bytes of SHA-256 over a domain string and the chunk's
op hashes (``op_hash``: SHA-256 of the signed encoding); a log digest the same over the
chunk digests. 16 bytes: a collision needs work of 2^64 by the equivocating device, and
buys it only a divergence that the next differing chunk or op would show anyway.
Limits: a ``C`` message lists at most ``MAX_CHUNKS`` chunks (the first 262,144 ops of a
replica); differences beyond them are not found by digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kiana.errors import FrameError, InputError
from kiana.sync.crdt_wire import MAX_INT, MAX_REPLICA_CHARS, Op, check_int, check_name, dumps, loads

if TYPE_CHECKING:
    from kiana.sync.crdt import SharedState

CHUNK = 64
DIGEST_BYTES = 16
MAX_CHUNKS = 4_096
MAX_DIFF_CHUNKS = 4  # chunks whose ops go back per C message (the next round finds more)
MAX_REPLICAS = 10_000
_CHUNK_DOMAIN = b"kiana:crdt-chunk:v1\x00"
_LOG_DOMAIN = b"kiana:crdt-log:v1\x00"


def chunk_digest(hashes: Sequence[bytes]) -> bytes:
    return hashlib.sha256(_CHUNK_DOMAIN + b"".join(hashes)).digest()[:DIGEST_BYTES]


def log_digest(chunks: Sequence[bytes]) -> bytes:
    return hashlib.sha256(_LOG_DOMAIN + b"".join(chunks)).digest()[:DIGEST_BYTES]


# -- messages -----------------------------------------------------------------------------


def encode_digests(state: SharedState) -> bytes:
    """``H`` body: every replica's applied seq and the digest of its log up to it."""
    return dumps(
        {r: [seq, state.digest(r, seq).hex()] for r, seq in state.state_vector().items() if seq}
    ).encode("utf-8")


def _digest(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * DIGEST_BYTES:
        raise InputError(f"a digest is {2 * DIGEST_BYTES} hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InputError("a digest is hex") from None


def _entries(data: bytes, what: str) -> list[tuple[str, int, object]]:
    value = loads(data, what)
    if not isinstance(value, dict) or len(value) > MAX_REPLICAS:
        raise FrameError(f"{what} maps at most {MAX_REPLICAS} replica ids to entries")
    out: list[tuple[str, int, object]] = []
    try:
        for replica, entry in value.items():
            check_name("replica id", replica, MAX_REPLICA_CHARS)
            if not isinstance(entry, list) or len(entry) != 2:
                raise InputError("an entry is [seq, digest(s)]")
            out.append((replica, check_int("seq", entry[0], 1, MAX_INT), entry[1]))
    except InputError as exc:
        raise FrameError(f"malformed {what}: {exc.message}") from exc
    return out


def decode_digests(data: bytes) -> dict[str, tuple[int, bytes]]:
    """An ``H`` body; ``FrameError`` if malformed."""
    try:
        return {r: (seq, _digest(d)) for r, seq, d in _entries(data, "a digest message")}
    except InputError as exc:
        raise FrameError(f"malformed digest message: {exc.message}") from exc


def decode_chunks(data: bytes) -> dict[str, tuple[int, list[bytes]]]:
    """A ``C`` body; ``FrameError`` if malformed (wrong number of chunks included)."""
    out: dict[str, tuple[int, list[bytes]]] = {}
    try:
        for replica, seq, raw in _entries(data, "a chunk message"):
            want = min(-(-seq // CHUNK), MAX_CHUNKS)
            if not isinstance(raw, list) or len(raw) != want:
                raise InputError(f"{want} chunk digests are due for seq {seq}")
            out[replica] = (seq, [_digest(d) for d in raw])
    except InputError as exc:
        raise FrameError(f"malformed chunk message: {exc.message}") from exc
    return out


# -- comparing ----------------------------------------------------------------------------


def differing_replicas(state: SharedState, theirs: dict[str, tuple[int, bytes]]) -> bytes | None:
    """The ``C`` body answering a peer's ``H``: chunk digests for every replica whose
    log differs from the peer's up to the peer's seq (None if none does)."""
    mine = state.state_vector()
    out: dict[str, list[object]] = {}
    for replica, (seq, digest) in theirs.items():
        if mine.get(replica, 0) >= seq and state.digest(replica, seq) != digest:
            chunks = state.chunk_digests(replica, seq)[:MAX_CHUNKS]
            out[replica] = [seq, [c.hex() for c in chunks]]
    return dumps(out).encode("utf-8") if out else None


def differing_ops(state: SharedState, theirs: dict[str, tuple[int, list[bytes]]]) -> list[Op]:
    """Answering a peer's ``C``: this replica's ops of the first ``MAX_DIFF_CHUNKS``
    chunks (per replica) whose digests differ from the peer's."""
    mine = state.state_vector()
    ops: list[Op] = []
    for replica, (seq, chunks) in theirs.items():
        if mine.get(replica, 0) < seq:
            continue  # we cannot compare yet; the peer's ops reach us by state vector
        own = state.chunk_digests(replica, seq)
        differ = [i for i, (a, b) in enumerate(zip(own, chunks, strict=False)) if a != b]
        for i in differ[:MAX_DIFF_CHUNKS]:
            ops += state.ops_of(replica, i * CHUNK + 1, min((i + 1) * CHUNK, seq))
    return ops


__all__ = [
    "CHUNK",
    "MAX_CHUNKS",
    "MAX_DIFF_CHUNKS",
    "chunk_digest",
    "decode_chunks",
    "decode_digests",
    "differing_ops",
    "differing_replicas",
    "encode_digests",
    "log_digest",
]
