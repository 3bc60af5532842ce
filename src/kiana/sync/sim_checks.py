"""The invariants a simulation must hold after healing and quiescence.

* blocks: every honest device holds exactly the shared blocks written and not erased;
  a device holds exactly its own person's private blocks, none of another person's;
* erasures: every tombstone is on every device that may see the erased block, and no
  device holds the content of any block a tombstone it knows of erases;
* nothing forged or invalid stored: every block and tombstone verifies against its
  author's key, every tombstone comes from someone allowed to erase, no id or ledger
  block hash the rogue forged is stored anywhere, no CRDT op the rogue forged is applied,
  and of two ops the rogue signed for one dot (equivocation) the lower-hash one is kept;
* CRDT: identical state everywhere (vector, registers, counters, sets), nothing held
  back, every counter equal to the sum of all increments made;
* ledger: one head everywhere, the head chain verifies from genesis, every record for a
  written block or tombstone is committed (a blinded token for a private one), no
  ledger record names a private block, and every record seen committed at any time
  during the run is still committed (nothing lost in a reorg).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from kiana.blocks import Tombstone
from kiana.blocks.signing import verify_block, verify_tombstone
from kiana.errors import KianaError
from kiana.ledger import (
    Ledger,
    Record,
    commit_record,
    erase_record,
    private_commit_token,
    private_erase_token,
    private_record,
    verify_chain,
)
from kiana.store import BlockStore
from kiana.store.db import Conn, Row
from kiana.sync.crdt import SharedState
from kiana.sync.items import fetch_records
from kiana.sync.sim_writes import COUNTERS, REGISTERS, SETS

if TYPE_CHECKING:
    from kiana.sync.sim import SimDevice, Simulation


def committed_ids(ledger: Ledger) -> set[str]:
    return {r.id for b in ledger.chain() for r in b.records}


def _rows(
    store: BlockStore,
) -> tuple[dict[str, tuple[str, str]], set[str], dict[str, tuple[str, str]]]:
    rows = store.db.read(lambda c: c.all("SELECT id, author, scope, erased FROM blocks"))
    live = {str(r[0]): (str(r[1]), str(r[2])) for r in rows if not r[3]}
    erased = {str(r[0]) for r in rows if r[3]}
    tombs = store.db.read(lambda c: c.all("SELECT id, erases, author FROM tombstones"))
    return live, erased, {str(t[0]): (str(t[1]), str(t[2])) for t in tombs}


def crdt_snapshot(state: SharedState) -> tuple[Any, ...]:
    return (
        sorted(state.state_vector().items()),
        state.held_count(),
        [(k, state.get(k)) for k in REGISTERS],
        [state.counter(c) for c in COUNTERS],
        [sorted(state.members(s)) for s in SETS],
    )


def _honest(sim: Simulation) -> list[SimDevice]:
    return [d for d in sim.devices if not d.spec.rogue and d.core is not None]


def fingerprint(sim: Simulation) -> str:
    parts: list[Any] = []
    for dev in _honest(sim):
        assert dev.store is not None and dev.core is not None
        live, _erased, tombs = _rows(dev.store)
        parts.append((sorted(live), sorted(tombs), dev.core.ledger.head.hash))
        parts.append((len(dev.core.ledger.pending), crdt_snapshot(dev.core.state)))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def check(sim: Simulation) -> list[str]:
    problems: list[str] = []
    devices = _honest(sim)
    if len(devices) != len([d for d in sim.devices if not d.spec.rogue]):
        return ["an honest device is not running after the heal"]
    exp = sim.expected
    person = sim.person
    role = {d.id: d.spec.role for d in sim.devices}
    erased_by_honest = {b for b, _a in exp.tombs.values()}
    author_of = {b: a for b, (a, _s) in exp.blocks.items()}
    all_tomb_targets: set[str] = set()
    snaps: dict[str, tuple[dict[str, tuple[str, str]], set[str], dict[str, tuple[str, str]]]] = {}
    sigs: dict[str, str] = {}  # block and tombstone id -> signature (for private tokens)
    for dev in devices:
        assert dev.store is not None
        snaps[dev.id] = _rows(dev.store)
        sigs |= _sigs(dev.store)
        all_tomb_targets |= {b for b, _a in snaps[dev.id][2].values()}

    for dev in devices:
        assert dev.store is not None and dev.core is not None
        name = dev.spec.name
        live, erased, tombs = snaps[dev.id]
        # blocks: exactly what it may see, written and not erased
        want = {
            b
            for b, (a, scope) in exp.blocks.items()
            if b not in erased_by_honest and (scope == "shared" or person.get(a) == dev.spec.person)
        }
        if set(live) != want:
            missing, extra = sorted(want - set(live)), sorted(set(live) - want)
            problems.append(f"{name}: blocks differ: missing {_ids(missing)}, extra {_ids(extra)}")
        for b, (a, scope) in live.items():
            if scope == "private" and person.get(a) != dev.spec.person:
                problems.append(f"{name}: holds private block {b[:12]} of another person")
        # erasures
        for t, (b, _a) in exp.tombs.items():
            scope = exp.blocks[b][1]
            if (
                scope == "shared" or person.get(author_of[b]) == dev.spec.person
            ) and t not in tombs:
                problems.append(f"{name}: lacks tombstone {t[:12]} (erases {b[:12]})")
        for b in sorted(all_tomb_targets & set(live)):
            problems.append(f"{name}: holds the content of erased block {b[:12]}")
        # nothing forged or invalid
        for bad in sorted(sim.forged.records & (set(live) | erased | set(tombs))):
            problems.append(f"{name}: stored forged record {bad[:12]}")
        for block in dev.store.iter_blocks():
            try:
                verify_block(block, dev.store.device_key)
            except KianaError as exc:
                problems.append(f"{name}: stored block {block.id[:12]} fails: {exc.code}")
        for rec in fetch_records(dev.store, sorted(tombs)):
            if not isinstance(rec, Tombstone):
                continue
            try:
                verify_tombstone(rec, dev.store.device_key)
            except KianaError as exc:
                problems.append(f"{name}: stored tombstone {rec.id[:12]} fails: {exc.code}")
            target_author = author_of.get(rec.erases)
            if target_author is not None and not (
                rec.author == target_author
                or person.get(rec.author) == person.get(target_author)
                or role.get(rec.author) == "authority"
            ):
                problems.append(f"{name}: stored tombstone {rec.id[:12]} by a device not allowed")
        # ledger
        ledger = dev.core.ledger
        result = verify_chain(list(ledger.chain()), sim.genesis, ledger.params)
        if not result.ok:
            problems.append(
                f"{name}: ledger chain fails at {result.first_bad_height}: {result.code}"
            )
        applied_sigs = {op.sig.hex() for op in dev.core.state.delta_since({})}
        for sig in sorted(sim.forged.ops & applied_sigs):
            problems.append(f"{name}: applied a forged CRDT op (signature {sig[:12]})")
        for dot, sig in sorted(sim.forged.kept.items()):
            kept = dev.core.state.op_at(dot)
            if kept is not None and kept.sig.hex() != sig:
                problems.append(f"{name}: kept the higher-hash op of equivocated {dot}")
        for h in sorted(sim.forged.ledger):
            if ledger.block(h) is not None:
                problems.append(f"{name}: accepted forged ledger block {h[:12]}")
        needed = {
            _commit(b, scope, sigs).id: f"commit {b[:12]}" for b, (_a, scope) in exp.blocks.items()
        }
        needed |= {
            _erase(t, b, exp.blocks[b][1], sigs).id: f"erase {t[:12]}"
            for t, (b, _a) in exp.tombs.items()
        }
        lost = sorted(what for rid, what in needed.items() if not ledger.is_committed(rid))
        if lost:
            problems.append(f"{name}: {len(lost)} record(s) not committed: {', '.join(lost[:5])}")
        named = {r.block for b in ledger.chain() for r in b.records} | {
            r.block for r in ledger.pending
        }
        private = sorted(b for b, (_a, scope) in exp.blocks.items() if scope == "private")
        if leaked := [b for b in private if b in named]:
            problems.append(f"{name}: the ledger names private block(s) {_ids(leaked)}")
        gone = [rid for rid in sim.ever_committed if not ledger.is_committed(rid)]
        if gone:
            problems.append(f"{name}: {len(gone)} record(s) once committed are no longer")

    first = devices[0]
    assert first.core is not None
    head = first.core.ledger.head
    state0 = crdt_snapshot(first.core.state)
    for dev in devices[1:]:
        assert dev.core is not None
        other = dev.core.ledger.head
        if other.hash != head.hash:
            problems.append(
                f"{dev.spec.name}: ledger head {other.height}:{other.hash[:12]} differs from "
                f"{first.spec.name}'s {head.height}:{head.hash[:12]}"
            )
        if crdt_snapshot(dev.core.state) != state0:
            problems.append(f"{dev.spec.name}: CRDT state differs from {first.spec.name}'s")
    if state0[1]:
        problems.append(f"{first.spec.name}: {state0[1]} CRDT op(s) still held back")
    counters = [exp.counters.get(c, 0) for c in COUNTERS]
    if state0[3] != counters:
        problems.append(f"counters are {state0[3]}, the increments made sum to {counters}")
    return problems


def _sigs(store: BlockStore) -> dict[str, str]:
    def query(c: Conn) -> list[Row]:
        return c.all("SELECT id, sig FROM blocks") + c.all("SELECT id, sig FROM tombstones")

    return {str(r[0]): str(r[1]) for r in store.db.read(query)}


def _commit(block: str, scope: str, sigs: dict[str, str]) -> Record:
    """The ledger record a block's author makes (private blocks: a blinded token)."""
    if scope == "shared":
        return commit_record(block)
    return private_record(private_commit_token(block, sigs.get(block, "")))


def _erase(tomb: str, block: str, scope: str, sigs: dict[str, str]) -> Record:
    if scope == "shared":
        return erase_record(tomb, block)
    return private_record(private_erase_token(tomb, sigs.get(tomb, "")))


def _ids(ids: list[str]) -> str:
    shown = ", ".join(i[:12] for i in ids[:4])
    return f"{len(ids)} [{shown}{', …' if len(ids) > 4 else ''}]"


__all__ = ["check", "committed_ids", "crdt_snapshot", "fingerprint"]
