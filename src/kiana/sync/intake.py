"""Records arriving from a peer: parsed, signatures checked a slice ahead, admitted and stored.

A ``B`` message carries up to ~600 JSON lines. The store thread parses them and
checks each id against its content (``parse_lines``: JSON, structure, canonical
bytes, SHA-256); ``check_signatures`` then checks each Ed25519 signature against
the author's key. That step is nearly all libsodium, which runs without the GIL,
and changes nothing: with a thread pool the engine hands it a slice at a time to a
worker and, meanwhile, stores the slices already checked (SQLite, also mostly
without the GIL), all in one transaction per message. (Parsing on the worker as
well was tried: two threads running Python made each SQLite row wait for the GIL.)
Admission, the erasure rules and storing stay on the store thread and see the
records in message order, so what is stored, refused and logged is the same with
or without a pool.

``Intake`` is the part of ``SyncEngine`` that handles records; ``PeerSync`` and
the admission types live here too (the engine module holds the protocol).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from kiana.blocks import Block, Tombstone
from kiana.blocks.codec import loads_record, parse_block, parse_tombstone
from kiana.blocks.signing import (
    KeyLookup,
    block_message,
    check_signature,
    tombstone_message,
    verify_block,
)
from kiana.errors import BlockError, KianaError
from kiana.store import BlockStore, PutResult
from kiana.sync.reconcile import ItemSet, Reconciler

log = logging.getLogger("kiana.sync")

SLICE = 100  # records per signature-checking job on the verify pool
STORE_BATCH = 100  # admitted blocks inserted per step (one transaction per message)
POOL_MIN = 2 * SLICE  # smaller messages are checked inline: a thread hop would cost more


@dataclass(slots=True)
class PeerSync:
    """What sync knows about one peer."""

    device: str
    full_view: bool  # same person: private items too
    up: bool = False
    up_since: int = 0
    session: bytes = b""
    reconciler: Reconciler | None = None
    started: int = 0
    last_exchange: int | None = None
    last_reconciled: int | None = None
    wanted: set[str] = field(default_factory=set)  # ids asked for, not yet received
    asked: int = 0  # how many of the running session's ``need`` were asked for already
    outgoing: deque[str] = field(default_factory=deque)  # ids to send, read a batch at a time
    behind: int = 0  # items the peer has that we lacked at the last reconciliation
    ahead: int = 0  # items we had that the peer lacked
    received: int = 0
    sent: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: int = 0
    next_resync: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a verified record may be stored here, and why not."""

    ok: bool
    reason: str = ""


# (record, sending peer) -> Verdict; the node decides membership, revocation, scope.
Admission = Callable[[Block | Tombstone, str], Verdict]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One line of a records message, parsed and its id checked (``parse_lines``)."""

    record: Block | Tombstone | None  # None: the line did not parse
    error: str = ""  # why the line did not parse, or why its id or signature is wrong
    rid: str = ""  # the record id for the rejection log (only when ``error``)
    signed: bytes = b""  # what the signature covers (when no error so far)


def parse_lines(lines: list[bytes]) -> list[Prepared]:
    """Parse each line and check its id against its content (the signature comes next)."""
    out: list[Prepared] = []
    for line in lines:
        try:
            obj = loads_record(line)
            record: Any = obj.get("record")
            kind = obj.get("type")
            item: Block | Tombstone
            if kind == "block":
                item = parse_block(record)
            elif kind == "tombstone":
                item = parse_tombstone(record)
            else:
                raise BlockError("unknown record type")
        except KianaError as exc:
            out.append(Prepared(None, exc.code, obj_id(line)))
            continue
        try:
            signed = block_message(item) if isinstance(item, Block) else tombstone_message(item)
        except KianaError as exc:
            out.append(Prepared(item, exc.code, item.id))
            continue
        out.append(Prepared(item, signed=signed))
    return out


def check_signatures(items: list[Prepared], lookup: KeyLookup) -> list[Prepared]:
    """The items with each signature checked (author known, Ed25519 valid); any thread.

    Nearly all of it is libsodium, which runs without the GIL: on a worker thread it
    overlaps the store thread's SQLite work instead of competing with it.
    """
    out: list[Prepared] = []
    for p in items:
        item = p.record
        if item is None or p.error:
            out.append(p)
            continue
        what = "block" if isinstance(item, Block) else "tombstone"
        try:
            check_signature(p.signed, item.sig, item.author, lookup, what, item.id)
        except KianaError as exc:
            out.append(Prepared(item, exc.code, item.id))
            continue
        out.append(p)
    return out


class Intake:
    """Records arriving: the ``SyncEngine`` methods that check and store them."""

    store: BlockStore
    admit: Admission
    on_stored: Callable[[list[Block], list[str]], None] | None
    may_erase: Callable[[str, str], bool] | None
    rejections: list[tuple[str, str, str]]
    _erased: set[str]
    _have: set[str]
    _private: set[str]
    _full: ItemSet
    _shared: ItemSet
    _origin: dict[str, str]

    def _pool(self) -> Executor | None:
        raise NotImplementedError

    def _prepared(self, lines: list[bytes]) -> Iterator[Prepared]:
        """The lines parsed and checked, in order. With a pool, signatures are checked a
        slice ahead on the worker while this thread parses on and stores what is done."""
        lookup = self.store.device_key
        pool = self._pool() if len(lines) >= POOL_MIN else None
        if pool is None:
            yield from check_signatures(parse_lines(lines), lookup)
            return
        jobs = [
            pool.submit(check_signatures, parse_lines(lines[i : i + SLICE]), lookup)
            for i in range(0, len(lines), SLICE)
        ]
        try:
            for job in jobs:
                yield from job.result()
        finally:
            for job in jobs:  # an error above: do not leave work running for nothing
                job.cancel()

    def _on_records(self, state: PeerSync, payload: bytes, now: int) -> None:
        lines = [line for line in payload.split(b"\n") if line]
        items = self._prepared(lines)
        while True:
            taken: list[Block] = []
            held: list[Prepared] = []
            results = self.store.put_batches(
                self._admitted(state, items, taken, held), verified=True
            )
            self._after_put(state, taken, results)
            if not held:
                return
            self._outside(state, held[0])

    def _admitted(
        self, state: PeerSync, items: Iterator[Prepared], taken: list[Block], held: list[Prepared]
    ) -> Iterator[list[Block]]:
        """Admitted blocks, ``STORE_BATCH`` at a time, in message order (inside the write).

        Stops at a record whose handling writes by itself (an admitted tombstone, a block
        erased here whose tombstone may be overruled) and leaves it in ``held``.
        """
        chunk: list[Block] = []
        for p in items:
            item = p.record
            if item is None:
                self._reject(state, p.rid, p.error)
                continue
            if isinstance(item, Block) and item.id in self._erased:
                if self.may_erase is not None:
                    held.append(p)
                    break
                state.wanted.discard(item.id)
                continue  # a tombstone beats content, whoever sends it (checked or not)
            if p.error:
                self._reject(state, p.rid, p.error)
                continue
            try:
                self._check(state, item)
            except KianaError as exc:
                self._reject(state, item.id, exc.code)
                continue
            if isinstance(item, Tombstone):
                held.append(p)  # admitted before the blocks above are stored, as it always was
                break
            chunk.append(item)
            if len(chunk) >= STORE_BATCH:
                taken += chunk
                yield chunk
                chunk = []
        if chunk:
            taken += chunk
            yield chunk

    def _outside(self, state: PeerSync, p: Prepared) -> None:
        """A record held back by ``_admitted``, handled after the blocks before it are stored."""
        item = p.record
        if isinstance(item, Tombstone):
            self._store_tombstone(state, item)  # already admitted
            return
        assert isinstance(item, Block)
        if not self._overruled(item):
            state.wanted.discard(item.id)
            return  # a tombstone beats content, whoever sends it
        if p.error:
            self._reject(state, p.rid, p.error)
            return
        try:
            self._check(state, item)
        except KianaError as exc:
            self._reject(state, item.id, exc.code)
            return
        self._after_put(state, [item], self.store.put_many([item], verified=True))

    def _overruled(self, block: Block) -> bool:
        """A tombstone that came before its block: drop it if its author may not erase it."""
        if self.may_erase is None:
            return False
        tomb = self.store.tombstone_for(block.id)
        if tomb is None or self.may_erase(tomb.author, block.author):
            return False
        try:
            verify_block(block, self.store.device_key)
        except KianaError:
            return False  # a forged block cannot lift a tombstone
        if not self.store.drop_tombstone(tomb.id):
            return False
        log.warning("dropped an erasure by %s that was not allowed", tomb.author)
        key = bytes.fromhex(tomb.id)
        self._have.discard(tomb.id)
        self._full.discard(tomb.created, key)
        self._shared.discard(tomb.created, key)
        self._private.discard(tomb.id)
        self._erased.discard(block.id)
        return True

    def _check(self, state: PeerSync, item: Block | Tombstone) -> None:
        verdict = self.admit(item, state.device)
        if not verdict.ok:
            refused = BlockError(f"refused by the admission rules: {verdict.reason}")
            refused.code = verdict.reason  # the rejection log shows the rule
            raise refused
        if isinstance(item, Block) and item.scope == "private" and not state.full_view:
            raise BlockError("a private block from a device of another person")

    def _reject(self, state: PeerSync, record_id: str, reason: str) -> None:
        state.rejected += 1
        state.wanted.discard(record_id)  # it will not come in a valid form from this peer
        state.behind = len(state.wanted)
        self.rejections.append((state.device, record_id, reason))
        del self.rejections[:-100]
        log.warning("rejected a record from %s: %s", state.device, reason)

    def _after_put(self, state: PeerSync, blocks: list[Block], results: list[PutResult]) -> None:
        if not blocks:
            return
        stored = [b for b, r in zip(blocks, results, strict=True) if r is PutResult.STORED]
        for block in blocks:
            state.wanted.discard(block.id)
        for block in stored:
            self._origin[block.id] = state.device
        state.received += len(stored)
        state.behind = len(state.wanted)
        if stored and self.on_stored is not None:
            self.on_stored(stored, [])

    def _store_tombstone(self, state: PeerSync, tomb: Tombstone) -> None:
        state.wanted.discard(tomb.id)
        if tomb.id in self._have:
            return
        self.store.erase(tomb, verified=True)
        self._origin[tomb.id] = state.device
        self._erased.add(tomb.erases)
        state.received += 1
        state.behind = len(state.wanted)
        if self.on_stored is not None:
            self.on_stored([], [tomb.erases])


def obj_id(line: bytes) -> str:
    """A record id for the rejection log, if one can be read."""
    try:
        value = json.loads(line).get("record", {}).get("id", "")
        return value if isinstance(value, str) else ""
    except (ValueError, AttributeError):
        return ""
