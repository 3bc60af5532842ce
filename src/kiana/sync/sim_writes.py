"""What honest simulated devices write, and the record of it the checks compare against."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kiana.blocks import make_block, make_tombstone
from kiana.store import BlockStore
from kiana.sync.crdt import SharedState
from kiana.sync.sim_mind import DeviceSpec

REGISTERS = ("k0", "k1", "k2")
COUNTERS = ("c0", "c1")
SETS = ("s0", "s1")
ELEMENTS = ("e0", "e1", "e2", "e3")


@dataclass
class Expected:
    blocks: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (author, scope)
    tombs: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (erases, author)
    counters: dict[str, int] = field(default_factory=dict)
    n: int = 0


def write_once(
    rng: random.Random,
    spec: DeviceSpec,
    store: BlockStore,
    state: SharedState,
    now: int,
    expected: Expected,
    person: dict[str, str],
) -> int:
    """One random write by ``spec``'s device; returns 1 if something was written."""
    expected.n += 1
    roll = rng.random()
    me = spec.device_id
    if roll < 0.45:
        scope = "private" if roll < 0.15 else "shared"
        block = make_block(
            spec.keys.signing,
            me,
            kind="fact",
            body=f"fact {expected.n} by {spec.name}",
            created=now,
            scope=scope,
        )
        store.put(block, verified=True)
        expected.blocks[block.id] = (me, scope)
        return 1
    if roll < 0.55:
        rows = store.db.read(
            lambda c: c.all(
                "SELECT id, author FROM blocks WHERE erased = 0 ORDER BY seq DESC LIMIT 40"
            )
        )
        allowed = [
            str(r[0])
            for r in rows
            if str(r[0]) in expected.blocks
            and (spec.role == "authority" or person.get(str(r[1])) == spec.person)
        ]
        if not allowed:
            return 0
        target = rng.choice(allowed)
        tomb = make_tombstone(spec.keys.signing, me, erases=target, created=now)
        store.erase(tomb, verified=True)
        expected.tombs[tomb.id] = (target, me)
        return 1
    kind = rng.randrange(6)
    if kind == 0:
        state.set(rng.choice(REGISTERS), rng.choice((rng.randrange(100), f"v{expected.n}", None)))
    elif kind == 1:
        state.delete(rng.choice(REGISTERS))
    elif kind in (2, 3):
        name, delta = rng.choice(COUNTERS), rng.randint(-3, 5)
        state.incr(name, delta)
        expected.counters[name] = expected.counters.get(name, 0) + delta
    elif kind == 4:
        state.add(rng.choice(SETS), rng.choice(ELEMENTS))
    else:
        state.remove(rng.choice(SETS), rng.choice(ELEMENTS))
    return 1


__all__ = ["COUNTERS", "ELEMENTS", "REGISTERS", "SETS", "Expected", "write_once"]
