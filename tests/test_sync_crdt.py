"""Shared state (kiana.sync.crdt): the semantics of each type, delivery, encoding, storage.

Stated semantics, each with its test below:

- registers: last writer wins by (lamport, replica, seq), whatever the delivery order;
  a delete is a write (tombstone); ints stay ints
- counters: the sum of every increment, negative ones included, as an int
- sets: observed-remove, add wins; a remove of an add its replica never saw does nothing
- delivery: duplicates ignored; an op ahead of a gap is held (and persisted) until the
  gap fills; state-vector anti-entropy converges over a lossy, duplicating, reordering net
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_helpers import SIG, mk, signed
from kiana.errors import ConflictError, FrameError, InputError, StoreError
from kiana.store import Database, migrate
from kiana.sync.crdt import (
    MAX_FRAME_BYTES,
    MAX_FRAME_OPS,
    MemoryOpStore,
    Op,
    SharedState,
    SqlOpStore,
    decode_ops,
    decode_state_vector,
    encode_ops,
    encode_state_vector,
)


def sync(*states: SharedState, wire: bool = True) -> None:
    """Full pairwise anti-entropy by state vector until nothing changes."""
    changed = True
    while changed:
        changed = False
        for a, b in itertools.permutations(states, 2):
            delta = a.delta_since(b.state_vector())
            if wire:
                delta = decode_ops(encode_ops(delta))
            changed |= b.apply(delta) > 0


def snapshot(s: SharedState, counters: Sequence[str] = (), sets: Sequence[str] = ()) -> object:
    return (
        s.items(),
        {c: s.counter(c) for c in counters},
        {n: s.members(n) for n in sets},
        s.state_vector(),
    )


# -- registers ------------------------------------------------------------------------


def test_concurrent_sets_pick_the_same_winner_in_every_delivery_order() -> None:
    writers = [mk(r) for r in ("a", "b", "c")]
    ops = [w.set("name", f"from {w.replica}") for w in writers]  # all lamport 1
    ops.append(writers[0].set("name", "a again"))  # lamport 2: the latest
    results = set()
    for order in itertools.permutations(ops):
        reader = mk("r")
        reader.apply(order)
        results.add(reader.get("name"))
    assert results == {"a again"}
    sync(*writers)
    assert {w.get("name") for w in writers} == {"a again"}


def test_equal_lamport_ties_break_by_replica_id() -> None:
    a, b = mk("a"), mk("b")
    a.set("k", 1)
    b.set("k", 2)
    sync(a, b)
    assert a.get("k") == b.get("k") == 2  # (1, "b") > (1, "a")


@pytest.mark.parametrize(("deleter", "setter", "survives"), [("a", "b", True), ("b", "a", False)])
def test_delete_against_a_concurrent_set_is_last_writer_wins(
    deleter: str, setter: str, survives: bool
) -> None:
    d, s = mk(deleter), mk(setter)
    d.set("k", "old")
    sync(d, s)
    d.delete("k")  # both at lamport 2: the higher replica id wins
    s.set("k", "new")
    for order in ([d, s], [s, d]):
        fresh = mk("z")
        for src in order:
            fresh.apply(src.delta_since({}))
        assert fresh.get("k") == ("new" if survives else None)
    sync(d, s)
    assert d.get("k") == s.get("k") == ("new" if survives else None)
    assert ("k" in dict(d.items())) is survives


def test_a_delete_is_not_undone_by_an_older_set_arriving_late() -> None:
    a, b = mk("a"), mk("b")
    old = a.set("k", "v1")
    b.apply([old])
    b.delete("k")
    late = mk("c")
    assert late.apply(b.delta_since({"a": 1})) == 1  # only b's delete
    late.apply([old])
    assert late.get("k") is None and late.get("k", "gone") == "gone"


def test_values_round_trip_as_json_with_ints_kept() -> None:
    a, b = mk("a"), mk("b")
    value = {"n": 3, "big": 2**62, "f": 3.0, "neg": -7, "l": [1, True, None, "ü"], "o": {}}
    a.set("v", value)
    a.set("n", 42)
    sync(a, b)
    got = b.get("v")
    assert got == value
    assert isinstance(got, dict) and type(got["n"]) is int and type(got["f"]) is float
    assert type(b.get("n")) is int


def test_get_returns_a_copy_and_set_copies_its_value() -> None:
    a = mk("a")
    value = {"tags": ["x"]}
    op = a.set("k", value)
    value["tags"].append("mutated")
    got = a.get("k")
    assert isinstance(got, dict)
    got["tags"] = []
    assert a.get("k") == {"tags": ["x"]} == op.value


def test_items_filters_by_prefix_and_hides_deleted_keys() -> None:
    s = mk("a")
    s.set("device/1/name", "laptop")
    s.set("device/2/name", "phone")
    s.set("setting/theme", "dark")
    s.delete("device/2/name")
    assert s.items("device/") == [("device/1/name", "laptop")]
    assert [k for k, _ in s.items()] == ["device/1/name", "setting/theme"]


# -- counters -------------------------------------------------------------------------


def test_counters_sum_concurrent_increments_including_negative_ones() -> None:
    states = [mk(r) for r in "abc"]
    states[0].incr("views", 5)
    states[1].incr("views", -3)
    states[2].incr("views", 10**12)
    states[2].incr("views")
    states[0].incr("other", -1)
    sync(*states)
    for s in states:
        assert s.counter("views") == 5 - 3 + 10**12 + 1
        assert type(s.counter("views")) is int
        assert s.counter("other") == -1 and s.counter("never") == 0


# -- observed-remove sets -------------------------------------------------------------


def test_concurrent_add_and_remove_add_wins() -> None:
    a, b = mk("a"), mk("b")
    a.add("pins", "x")
    sync(a, b)
    assert a.remove("pins", "x") is not None  # removes the add it saw
    b.add("pins", "x")  # concurrent re-add: a new tag a has not seen
    assert a.members("pins") == frozenset()
    sync(a, b)
    assert a.members("pins") == b.members("pins") == {"x"}


def test_remove_of_an_unobserved_add_does_nothing() -> None:
    a, b = mk("a"), mk("b")
    a.add("tags", "t")
    assert b.remove("tags", "t") is None  # b never saw the add: no op at all
    b.add("tags", "u")
    assert b.remove("tags", "u") is not None
    sync(a, b)
    assert a.members("tags") == b.members("tags") == {"t"}


def test_a_remove_arriving_before_the_add_it_observed_still_removes_it() -> None:
    a, b, c = mk("a"), mk("b"), mk("c")
    add = a.add("s", "x")
    b.apply([add])
    rem = b.remove("s", "x")
    assert rem is not None and rem.tags == (("a", 1),)
    c.apply([rem])  # from b, before a's add reached c
    assert c.members("s") == frozenset()
    c.apply([add])
    assert c.members("s") == frozenset()
    sync(a, b, c)
    assert a.members("s") == b.members("s") == c.members("s") == frozenset()


def test_remove_then_add_again_on_one_replica() -> None:
    s = mk("a")
    s.add("s", "x")
    s.add("s", "x")
    s.add("s", "y")
    s.remove("s", "x")
    assert s.members("s") == {"y"}
    s.add("s", "x")
    assert s.members("s") == {"x", "y"} and s.members("none") == frozenset()


# -- delivery -------------------------------------------------------------------------


def test_ops_after_a_gap_are_held_then_applied_when_it_fills() -> None:
    a, b = mk("a"), mk("b")
    ops = [a.incr("n", 1), a.set("k", "v"), a.incr("n", 10), a.add("s", "x")]
    assert b.apply([ops[3], ops[1]]) == 0
    assert b.counter("n") == 0 and b.get("k") is None and b.members("s") == frozenset()
    assert b.state_vector() == {} and b.missing() == {"a": 1} and b.held_count() == 2
    assert b.apply([ops[0]]) == 2  # 1 and the held 2
    assert b.state_vector() == {"a": 2} and b.missing() == {"a": 3}
    assert b.apply(ops) == 2
    assert b.missing() == {} and b.held_count() == 0
    assert snapshot(a, ["n"], ["s"]) == snapshot(b, ["n"], ["s"])


def test_duplicates_are_ignored() -> None:
    a, b = mk("a"), mk("b")
    ops = [a.incr("n", 2), a.add("s", "x"), a.set("k", 1)]
    assert b.apply(ops + ops) == 3
    assert b.apply(ops) == 0
    assert b.apply([ops[2], ops[2]]) == 0
    assert b.counter("n") == 2 and b.delta_since({}) == ops


def test_own_ops_pulled_back_after_a_restore_and_a_gap_blocks_local_writes() -> None:
    a = mk("a")
    ops = [a.incr("n") for _ in range(3)]
    restored = mk("a")
    restored.apply([ops[2]])
    with pytest.raises(ConflictError):
        restored.incr("n")
    restored.apply(ops)
    assert restored.incr("n").seq == 4 and restored.counter("n") == 4


def test_delta_since_is_in_causal_order_and_limited_to_prefixes() -> None:
    a, b = mk("a"), mk("b")
    for i in range(5):
        a.incr("n", i)
        b.apply(a.delta_since(b.state_vector()))
        b.incr("m", i)
        a.apply(b.delta_since(a.state_vector()))
    ops = a.delta_since({})
    assert [op.lamport for op in ops] == sorted(op.lamport for op in ops)
    for replica in "ab":
        assert [op.seq for op in ops if op.replica == replica] == [1, 2, 3, 4, 5]
    assert a.delta_since({"a": 5, "b": 3}) == [op for op in ops if op.replica == "b"][3:]
    for limit in range(11):
        part = a.delta_since({}, limit=limit)
        fresh = mk("z")
        assert fresh.apply(part) == limit and fresh.held_count() == 0


def test_seeded_lossy_network_converges_by_anti_entropy() -> None:
    run_network(1234)


@settings(max_examples=25)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_ops_and_delivery_converge_everywhere(seed: int) -> None:
    run_network(seed)


KEYS = ["k0", "k1", "k2"]
COUNTERS = ["c0", "c1"]
SETS = ["s0", "s1"]
ELEMENTS = ["x", "y", "z"]


def random_op(rng: random.Random, s: SharedState) -> Op | None:
    roll = rng.random()
    if roll < 0.25:
        return s.set(rng.choice(KEYS), rng.choice([rng.randint(-5, 5), "v", [1, 2], None]))
    if roll < 0.35:
        return s.delete(rng.choice(KEYS))
    if roll < 0.55:
        return s.incr(rng.choice(COUNTERS), rng.randint(-3, 3))
    if roll < 0.8:
        return s.add(rng.choice(SETS), rng.choice(ELEMENTS))
    return s.remove(rng.choice(SETS), rng.choice(ELEMENTS))


def run_network(seed: int, *, replicas: int = 4, steps: int = 200) -> None:
    rng = random.Random(seed)
    states = [mk(f"r{i}") for i in range(replicas)]
    in_flight: list[tuple[int, Op]] = []
    for _ in range(steps):
        if in_flight and rng.random() < 0.5:
            target, op = in_flight.pop(rng.randrange(len(in_flight)))  # reorder
            if rng.random() < 0.2:
                in_flight.append((target, op))  # duplicate
            states[target].apply([op])
            continue
        i = rng.randrange(replicas)
        new = random_op(rng, states[i])
        if new is None:
            continue
        for target in range(replicas):
            if target != i and rng.random() > 0.3:  # drop 30%
                in_flight.append((target, new))
    # Anti-entropy: random pairs pull by state vector, in small encoded batches.
    rounds = 0
    while len({json.dumps(sorted(s.state_vector().items())) for s in states}) > 1 or any(
        s.missing() for s in states
    ):
        a, b = rng.sample(states, 2)
        delta = a.delta_since(decode_state_vector(encode_state_vector(b.state_vector())), 7)
        b.apply(decode_ops(encode_ops(delta)))
        rounds += 1
        assert rounds < 10_000, "anti-entropy did not quiesce"
    first = snapshot(states[0], COUNTERS, SETS)
    for s in states[1:]:
        assert snapshot(s, COUNTERS, SETS) == first
    # And the state equals a fresh replica fed everything in one go.
    fresh = mk("fresh")
    fresh.apply(reversed(states[0].delta_since({})))
    assert snapshot(fresh, COUNTERS, SETS) == first


# -- validation and encoding ----------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set("k" * 257, 1),
        lambda s: s.set("", 1),
        lambda s: s.set("k", {1, 2}),
        lambda s: s.set("k", float("nan")),
        lambda s: s.set("k", {1: "int key"}),
        lambda s: s.set("k", "x" * (64 * 1024)),
        lambda s: s.set("k", 2**64),
        lambda s: s.set("k", "\ud800"),
        lambda s: s.set("k", [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
        lambda s: s.incr("n", 1.5),
        lambda s: s.incr("n", True),
        lambda s: s.add("s", "e" * 257),
        lambda s: s.add("s", 3),
        lambda s: s.remove("s" * 300, "e"),
        lambda s: s.delta_since({"a": -1}),
        lambda s: s.apply(["not an op"]),
        lambda s: mk("r" * 65),
        lambda s: Op("a", 0, 1, "set", "k", 1),
        lambda s: Op("a", 1, 1, "pop", "k"),  # type: ignore[arg-type]
        lambda s: Op("a", 1, 1, "del", "k", 1),
        lambda s: Op("a", 1, 1, "add", "k", "x", (("a", 1),)),
    ],
)
def test_invalid_input_is_refused(call: Callable[[SharedState], object]) -> None:
    s = mk("a")
    with pytest.raises(InputError):
        call(s)
    assert s.state_vector() == {}


def test_encoding_round_trips_every_kind() -> None:
    a = mk("device-ä")
    b = mk("b")
    b.add("s", "x")
    a.apply(b.delta_since({}))
    ops = [
        a.set("k", {"n": 1, "s": "ü"}),
        a.delete("k"),
        a.incr("c", -5),
        a.add("s", "y"),
    ]
    removal = a.remove("s", "x")
    assert removal is not None
    ops = [b.delta_since({})[0], *ops, removal]
    data = encode_ops(ops)
    assert decode_ops(data) == ops
    assert decode_ops(encode_ops([])) == []
    assert json.loads(data)["replicas"] == ["b", "device-ä"]
    assert decode_state_vector(encode_state_vector({"a": 3, "b": 0})) == {"a": 3, "b": 0}


def _frame(ops: list[object], replicas: list[object] | None = None) -> bytes:
    """A version 2 frame of ``ops`` ([ri, seq, lamport, kind, key, ...]) with a
    well-formed signature put into each op that is a list."""
    rows = [[*o[:3], SIG.hex(), *o[3:]] if isinstance(o, list) else o for o in ops]
    return json.dumps({"v": 2, "replicas": replicas or ["a"], "ops": rows}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"v": 2, "replicas": []}',
        b'{"v": 3, "replicas": [], "ops": []}',
        b'{"v": 1, "replicas": [], "ops": []}',
        b'{"v": true, "replicas": [], "ops": []}',
        b'{"v": 2, "replicas": [], "ops": [], "extra": 1}',
        b'{"v": 2, "replicas": {}, "ops": []}',
        _frame([[0, 1, 1, "set", "k", 1]])[:-7],  # truncated
        _frame([[0, 1, 1, "set", "k", 1]]).replace(b"1]]}", b"NaN]]}"),
        _frame([[0, 1, 1, "set", "k", 1]]).replace(b'"v": 2', b'"v": 1'),  # old format
        _frame([[0, 1, 1, "set", "k", 1]]).replace(SIG.hex().encode(), b"00" * 63),
        _frame([[0, 1, 1, "set", "k", 1]]).replace(SIG.hex().encode(), b"zz" * 64),
        json.dumps({"v": 2, "replicas": ["a"], "ops": [[0, 1, 1, "set", "k", 1]]}).encode(),
        json.dumps({"v": 2, "replicas": ["a"], "ops": [[0, 1, 1, None, "set", "k", 1]]}).encode(),
        _frame([[0, 1, 1, "set", "k"]]),
        _frame([[0, 1.0, 1, "set", "k", 1]]),
        _frame([[0, 0, 1, "set", "k", 1]]),
        _frame([[0, 1, -1, "set", "k", 1]]),
        _frame([[0, 1, 2**63, "set", "k", 1]]),
        _frame([[1, 1, 1, "set", "k", 1]]),
        _frame([[True, 1, 1, "set", "k", 1]]),
        _frame([[0, 1, 1, "pop", "k", 1]]),
        _frame([[0, 1, 1, "set", "k" * 257, 1]]),
        _frame([[0, 1, 1, "del", "k", 1]]),
        _frame([[0, 1, 1, "incr", "k", "1"]]),
        _frame([[0, 1, 1, "add", "k", 1]]),
        _frame([[0, 1, 1, "rem", "k", "x", [["a"]]]]),
        _frame([[0, 1, 1, "rem", "k", "x", [["a", 0]]]]),
        _frame([[0, 1, 1, "rem", "k", "x", "a"]]),
        _frame([[0, 1, 1, "set", "k", 1]], replicas=["r" * 65]),
        _frame([[0, 1, 1, "set", "k", 1]], replicas=[7]),
        _frame([[0, 1, 1, "set", "k", "x" * (64 * 1024)]]),
        _frame(["op"]),
        _frame([[0, 1, 1, "set", "k", 1]]).replace(b"1]]}", b"1" + b"0" * 5000 + b"]]}"),
        b"[" * 100_000 + b"]" * 100_000,
        b" " * (MAX_FRAME_BYTES + 1),
    ],
)
def test_malformed_frames_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_ops(data)


@pytest.mark.parametrize("data", [b"[]", b'{"a": -1}', b'{"a": 1.0}', b'{"": 1}', b"{"])
def test_malformed_state_vectors_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_state_vector(data)


def test_oversized_frames_are_refused_on_encode() -> None:
    a = mk("a")
    big = [a.set(f"k{i}", "x" * 60_000) for i in range(300)]
    with pytest.raises(FrameError):
        encode_ops(big)
    many = [Op("a", i, i, "incr", "n", 1, sig=SIG) for i in range(1, MAX_FRAME_OPS + 2)]
    with pytest.raises(FrameError):
        encode_ops(many)
    assert len(decode_ops(encode_ops(a.delta_since({}, limit=200)))) == 200
    with pytest.raises(FrameError):
        decode_ops(b"nope")
    with pytest.raises(FrameError):
        decode_ops("text")  # type: ignore[arg-type]


# -- persistence ----------------------------------------------------------------------


def test_state_survives_a_restart_on_sql(sql_store: Callable[[], SqlOpStore]) -> None:
    a, other = mk("a", store=sql_store()), mk("b")
    a.set("name", "laptop")
    a.set("n", 7)
    a.incr("c", 3)
    a.add("s", "x")
    a.add("s", "y")
    a.remove("s", "x")
    theirs = [other.incr("c", 10), other.set("k", [1]), other.delete("n"), other.incr("c", -1)]
    assert a.apply([theirs[3], theirs[1]]) == 0  # held: persisted as such
    again = mk("a", store=sql_store())
    assert snapshot(again, ["c"], ["s"]) == snapshot(a, ["c"], ["s"])
    assert again.missing() == {"b": 1} and again.held_count() == 2
    assert type(again.get("n")) is int and again.members("s") == {"y"}
    assert again.apply(theirs) == 4  # fills the gap: the held ops become applied
    assert again.incr("c", 1).seq == 7  # own numbering continues
    third = mk("a", store=sql_store())
    assert third.held_count() == 0
    assert snapshot(third, ["c"], ["s"]) == snapshot(again, ["c"], ["s"])
    assert third.counter("c") == 3 + 10 - 1 + 1 and third.get("n") is None


def test_memory_store_survives_a_new_state() -> None:
    store = MemoryOpStore()
    a = mk("a", store=store)
    a.incr("n", 5)
    a.apply([signed(Op("b", 2, 9, "add", "s", "x"))])
    again = mk("a", store=store)
    assert again.counter("n") == 5 and again.missing() == {"b": 1}
    assert again.apply([signed(Op("b", 1, 8, "add", "s", "y"))]) == 2
    assert mk("a", store=store).members("s") == {"x", "y"}


def test_a_corrupt_row_is_a_store_error(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        migrate(db)
        db.write(
            lambda c: c.execute(
                "INSERT INTO crdt_ops (replica, seq, lamport, op, held) VALUES ('a', 1, 1, ?, 0)",
                ('["set"]',),
            )
        )
        with pytest.raises(StoreError):
            mk("a", store=SqlOpStore(db))
    finally:
        db.close()


# -- scale ----------------------------------------------------------------------------


def test_twenty_thousand_ops_in_reverse_order_and_a_rebuild(tmp_path: Path) -> None:
    """Sanity only (it finishes): the worst delivery order, held then released at once.
    Speed is measured in the benchmarks."""
    a = mk("a")
    for i in range(20_000):
        if i % 4 == 0:
            a.set(f"k{i % 1000}", i)
        elif i % 4 == 1:
            a.incr("n", 1)
        elif i % 4 == 2:
            a.add("s", f"e{i % 500}")
        else:
            a.remove("s", f"e{(i - 1) % 500}")
    ops = a.delta_since({})
    assert len(ops) == 20_000
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        migrate(db)
        b = mk("b", store=SqlOpStore(db))
        assert b.apply(reversed(ops)) == 20_000
        rebuilt = mk("b", store=SqlOpStore(db))
    finally:
        db.close()
    sets = ["s"]
    assert snapshot(b, ["n"], sets) == snapshot(a, ["n"], sets) == snapshot(rebuilt, ["n"], sets)
