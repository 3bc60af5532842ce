"""Equivocation: a member signs two different ops for one dot and sends each to other
devices. Devices find it (digests, ``crdt_digest``), keep the op with the lower
``op_hash`` whatever the arrival order, rebuild if they had applied the other, keep and
forward the proof, and report it (code ``equivocation``)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import pytest

from crdt_helpers import SIG, mk, signed
from kiana.errors import FrameError
from kiana.sync.crdt import Op, SharedState, SqlOpStore, encode_ops
from kiana.sync.crdt_digest import CHUNK, decode_chunks, decode_digests
from kiana.sync.crdt_wire import op_hash
from kiana.sync.state_gossip import StateGossip


def pair(first: Op, second: Op) -> tuple[Op, Op]:
    """(winner, loser) by the rule: the lower op_hash is kept."""
    return (first, second) if op_hash(first) < op_hash(second) else (second, first)


def snapshot(s: SharedState) -> object:
    return (s.items(), s.counter("n"), sorted(s.members("s")), s.state_vector(), s.held_count())


class Net:
    """StateGossip peers on an in-memory, lossless network; ``settle`` runs it to quiet."""

    def __init__(self, states: dict[str, SharedState]) -> None:
        self.states = states
        self.gossip = {
            name: StateGossip(s, ask_ms=100, digest_ms=100) for name, s in states.items()
        }
        self.queue: deque[tuple[str, str, bytes]] = deque()
        self.now = 0

    def link(self, a: str, b: str) -> None:
        self.queue += [(a, to, m) for to, m in self.gossip[a].peer_up(b, self.now)]
        self.queue += [(b, to, m) for to, m in self.gossip[b].peer_up(a, self.now)]

    def inject(self, to: str, sender: str, ops: list[Op]) -> None:
        """``sender`` (e.g. the equivocating device) hands ``to`` these ops."""
        self.queue.append((sender, to, b"O" + encode_ops(ops)))

    def settle(self) -> int:
        delivered = 0
        for _round in range(200):
            while self.queue:
                src, dst, body = self.queue.popleft()
                if dst in self.gossip:
                    out = self.gossip[dst].handle(src, body, self.now)
                    self.queue += [(dst, to, m) for to, m in out]
                delivered += 1
                assert delivered < 50_000, "the network does not quiet down"
            self.now += 100
            for name, g in self.gossip.items():
                self.queue += [(name, to, m) for to, m in g.tick(self.now)]
            if not self.queue:
                return delivered
        raise AssertionError("the network does not quiet down")


def rogue_pair() -> tuple[Op, Op]:
    """Two ops the rogue device ``r`` signed for its dot (r, 1): an add and an incr."""
    return signed(Op("r", 1, 1, "add", "s", "x")), signed(Op("r", 1, 1, "incr", "n", 5))


@pytest.mark.parametrize("flip", [False, True])
def test_two_devices_given_the_two_ops_in_opposite_orders_converge(
    flip: bool, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = rogue_pair()
    if flip:
        one, two = two, one
    winner, loser = pair(one, two)
    net = Net({"a": mk("a"), "b": mk("b")})
    net.states["a"].set("k", "a's")
    net.link("a", "b")
    net.settle()
    net.inject("a", "r", [one])
    net.inject("b", "r", [two])
    with caplog.at_level(logging.WARNING, logger="kiana.sync.state"):
        net.settle()
    a, b = net.states["a"], net.states["b"]
    assert snapshot(a) == snapshot(b)
    assert a.op_at(("r", 1)) == b.op_at(("r", 1)) == winner
    assert a.equivocations() == b.equivocations() == {("r", 1): (winner, loser)}
    expected = ({"x"}, 0) if winner.kind == "add" else (set(), 5)
    assert (set(a.members("s")), a.counter("n")) == expected
    assert a.get("k") == b.get("k") == "a's"
    for name in ("a", "b"):
        g = net.gossip[name]
        assert [r for r in g.rejections if r[2] == "equivocation"] == [
            (next(p for p in ("a", "b") if p != name), "r:1", "equivocation")
        ]
        assert g.equivocations == 1 and sum(g.refused.values()) == 1
    warnings = [r.getMessage() for r in caplog.records if "equivocation" in r.getMessage()]
    assert warnings and all("device r" in w for w in warnings)
    assert not any("x" in w.split("(")[0].split(": ")[-1] for w in warnings)  # no content
    # Nothing more happens: both keep the same pair, nothing goes back and forth.
    assert net.settle() == 0


def test_a_device_holding_the_loser_gets_the_winner_from_one_that_knows_both() -> None:
    """a already knows both ops (no news for it) and is ahead, so only a compares; b
    holds the loser: a must send the winner back when b's op shows up, or b would keep
    the loser for ever."""
    winner, loser = pair(*rogue_pair())
    net = Net({"a": mk("a"), "b": mk("b")})
    net.inject("a", "r", [loser])
    net.inject("a", "r", [winner, signed(Op("r", 2, 2, "set", "k", 1))])
    net.inject("b", "r", [loser])
    net.settle()
    assert net.states["b"].op_at(("r", 1)) == loser
    net.link("a", "b")
    net.settle()
    assert net.states["b"].op_at(("r", 1)) == winner
    assert snapshot(net.states["a"]) == snapshot(net.states["b"])


def test_three_devices_in_a_line_converge_on_one_winner() -> None:
    """a gets one op, c the other, b neither; a - b - c linked only in a line."""
    one, two = rogue_pair()
    winner, loser = pair(one, two)
    net = Net({"a": mk("a"), "b": mk("b"), "c": mk("c")})
    net.inject("a", "r", [one])
    net.inject("c", "r", [two])
    net.states["b"].incr("n", 1)
    net.settle()
    net.link("a", "b")
    net.link("b", "c")
    net.settle()
    states = list(net.states.values())
    assert all(snapshot(s) == snapshot(states[0]) for s in states)
    assert all(s.op_at(("r", 1)) == winner for s in states)
    assert all(s.equivocations() == {("r", 1): (winner, loser)} for s in states)
    assert states[0].counter("n") == 1 + (5 if winner.kind == "incr" else 0)


def test_an_equivocation_deep_in_a_long_log_is_found_by_chunks() -> None:
    """Equal vectors of 200 ops of r that differ only at seq 150: digests find it."""
    honest = [signed(Op("r", i, i, "incr", "n", 1)) for i in range(1, 201)]
    other = signed(Op("r", 150, 150, "incr", "n", 100))
    winner, _loser = pair(honest[149], other)
    net = Net({"a": mk("a"), "b": mk("b")})
    net.inject("a", "r", honest)
    net.inject("b", "r", [*honest[:149], other, *honest[150:]])
    net.settle()
    net.link("a", "b")
    net.settle()
    a, b = net.states["a"], net.states["b"]
    assert a.state_vector() == b.state_vector() == {"r": 200}
    assert a.op_at(("r", 150)) == b.op_at(("r", 150)) == winner
    assert a.counter("n") == b.counter("n") == 199 + (winner.value if winner.kind == "incr" else 0)
    assert a.digest("r", 200) == b.digest("r", 200)
    assert len(a.chunk_digests("r", 200)) == -(-200 // CHUNK)


def test_held_ops_after_the_dot_and_a_held_equivocated_dot() -> None:
    r1 = signed(Op("r", 1, 1, "set", "k", "first"))
    r2a, r2b = signed(Op("r", 2, 2, "add", "s", "x")), signed(Op("r", 2, 2, "add", "s", "y"))
    r3 = signed(Op("r", 3, 3, "incr", "n", 2))
    winner, loser = pair(r2a, r2b)
    a, b = mk("a"), mk("b")
    # a: r2a and r3 held (r1 missing), then r2b replaces or proves the held dot, then r1
    assert a.receive([r3, r2a], sender="r").applied == 0 and a.held_count() == 2
    got = a.receive([r2b], sender="r")
    assert [x.code for x in got.refused] == ["equivocation"] and got.equivocated == (("r", 2),)
    assert a.op_at(("r", 2)) == winner and a.held_count() == 2
    assert a.receive([r1], sender="r").applied == 3
    # b: all applied first with the other op, then the pair arrives (as a peer sends it)
    b.receive([r1, loser, r3], sender="r")
    assert b.members("s") == {loser.value}
    got = b.receive([winner, loser], sender="a")
    assert got.equivocated == (("r", 2),) and [x.code for x in got.refused] == ["equivocation"]
    assert snapshot(a) == snapshot(b) and a.members("s") == {winner.value}
    assert a.equivocations() == b.equivocations() == {("r", 2): (winner, loser)}
    # the same ops again: duplicates, nothing reported
    assert a.receive([r1, r2a, r2b, r3], sender="b").refused == ()


def test_a_remove_that_tagged_the_losing_add_converges() -> None:
    """h saw the losing add and removed its element; the winner adds another element."""
    add_x, add_y = signed(Op("r", 1, 1, "add", "s", "x")), signed(Op("r", 1, 1, "add", "s", "y"))
    winner, loser = pair(add_x, add_y)
    h, a = mk("h"), mk("a")
    h.receive([loser], sender="r")
    rem = h.remove("s", str(loser.value))
    assert rem is not None and rem.tags == (("r", 1),)
    h.add("s", "z")
    a.receive([winner], sender="r")
    a.receive(h.delta_since({}), sender="h")  # a takes h's rem and the loser as proof
    h.receive([winner], sender="a")
    assert snapshot(a) == snapshot(h)
    assert h.members("s") == {str(winner.value), "z"}


def test_a_third_op_for_the_dot_takes_over_only_if_lower() -> None:
    ops = [signed(Op("r", 1, 1, "set", "k", v)) for v in ("p", "q", "t", "u")]
    ranked = sorted(ops, key=op_hash)
    a, b = mk("a"), mk("b")
    for op in ranked[1:]:  # the lowest comes last
        a.receive([op], sender="r")
    assert a.op_at(("r", 1)) == ranked[1]
    got = a.receive([ranked[0]], sender="r")
    assert got.equivocated == (("r", 1),) and a.op_at(("r", 1)) == ranked[0]
    assert a.equivocations()[("r", 1)] == (ranked[0], ranked[1])
    for op in reversed(ranked):
        b.receive([op], sender="r")
    assert snapshot(a) == snapshot(b) and a.get("k") == ranked[0].value


def test_a_differing_op_that_does_not_verify_is_a_bad_signature_not_a_proof() -> None:
    good = signed(Op("r", 1, 1, "set", "k", "real"))
    forged = Op("r", 1, 1, "set", "k", "fake", (), SIG)
    a = mk("a")
    a.receive([good], sender="r")
    got = a.receive([forged], sender="b")
    assert [x.code for x in got.refused] == ["bad_signature"] and got.equivocated == ()
    assert a.get("k") == "real" and a.equivocations() == {}


def test_a_restart_from_the_sql_op_log_keeps_the_winner_and_the_proof(
    sql_store: Callable[[], SqlOpStore],
) -> None:
    one, two = rogue_pair()
    winner, loser = pair(one, two)
    r3a, r3b = signed(Op("r", 3, 3, "set", "j", 1)), signed(Op("r", 3, 3, "set", "j", 2))
    held_winner, held_loser = pair(r3a, r3b)
    a = mk("a", store=sql_store())
    a.set("mine", True)
    a.receive([loser], sender="r")
    a.receive([held_loser], sender="r")  # held: r:2 is missing
    a.receive([winner, held_winner], sender="b")
    before = snapshot(a)
    again = mk("a", store=sql_store())
    assert snapshot(again) == before and again.held_count() == 1
    assert again.equivocations() == {
        ("r", 1): (winner, loser),
        ("r", 3): (held_winner, held_loser),
    }
    assert again.op_at(("r", 3)) == held_winner
    assert again.receive([loser, held_loser, held_winner], sender="b").refused == ()
    assert again.receive([signed(Op("r", 2, 2, "incr", "n", 1))], sender="r").applied == 2
    assert again.get("j") == held_winner.value
    third = mk("a", store=sql_store())
    assert snapshot(third) == snapshot(again)
    assert set(third.equivocations()) == {("r", 1), ("r", 3)}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (b"H", b"[1]"),
        (b"H", b'{"r":[1,"zz"]}'),
        (b"H", b'{"r":[0,"' + b"00" * 16 + b'"]}'),
        (b"C", b'{"r":[65,["' + b"00" * 16 + b'"]]}'),
        (b"C", b'{"r":[1,"x"]}'),
    ],
)
def test_malformed_digest_messages_are_refused(kind: bytes, body: bytes) -> None:
    with pytest.raises(FrameError):
        (decode_digests if kind == b"H" else decode_chunks)(body)
    g = StateGossip(mk("a"))
    assert g.handle("b", kind + body, 0) == [] and g.refused == {"b": 1}
