"""Signed CRDT ops: every op carries its replica's Ed25519 signature, checked on receipt.

Refused (never applied, held, stored or sent on; the rest of the batch is kept): an op
forged under another replica's id, a bad or missing signature, a payload changed after
signing, a replica that is not a member, a revoked replica's op sent by that device.
A revoked replica's ops forwarded by a member are taken, so devices that learned of the
revocation at different times still converge. Frames of the old unsigned format 1 and
truncated frames are ``FrameError``s. Storage: migration 8 adds the signature column;
ops stored before it are signed again (own) or forgotten and fetched again (others').
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
from nacl.signing import SigningKey

from conftest import device_for
from crdt_helpers import directory, key_for, mk, signed
from kiana.blocks.model import BLOCK_DOMAIN
from kiana.errors import BadSignatureError, ConflictError, FrameError, StoreError
from kiana.identity.keys import DeviceKeys
from kiana.store import Database, migrate
from kiana.store.blocks import BlockStore
from kiana.store.migrations import MIGRATIONS
from kiana.sync.crdt import (
    MemoryOpStore,
    Op,
    ReplicaKey,
    SharedState,
    SqlOpStore,
    decode_ops,
    encode_ops,
    verify_op,
)
from kiana.sync.crdt_members import store_directory
from kiana.sync.crdt_wire import OP_DOMAIN, signed_message
from kiana.sync.state_gossip import StateGossip


def members(*names: str, revoked: tuple[str, ...] = ()) -> Callable[[str], ReplicaKey | None]:
    """A directory of exactly ``names`` (and ``revoked``, marked so)."""
    table = {n: ReplicaKey(bytes(key_for(n).verify_key)) for n in names}
    table |= {n: ReplicaKey(bytes(key_for(n).verify_key), active=False) for n in revoked}
    return table.get


def replica(name: str, dir_: Callable[[str], ReplicaKey | None]) -> SharedState:
    return SharedState(name, signer=key_for(name), directory=dir_)


def codes(s: SharedState, ops: list[Op], sender: str | None = None) -> list[str]:
    return [r.code for r in s.receive(ops, sender=sender).refused]


# -- the signature ---------------------------------------------------------------------


def _variants(o: Op) -> list[Op]:
    """``o`` with one field changed at a time (still a well-formed op)."""
    other_value = {"set": "other", "del": None, "incr": 99, "add": "y", "rem": "y"}[o.kind]
    out = [
        dataclasses.replace(o, seq=o.seq + 1),
        dataclasses.replace(o, lamport=o.lamport + 1),
        dataclasses.replace(o, key=o.key + "x"),
        dataclasses.replace(o, kind="del", value=None, tags=())
        if o.kind != "del"
        else dataclasses.replace(o, kind="set", value=None),
    ]
    if o.kind != "del":
        out.append(dataclasses.replace(o, value=other_value))
    if o.kind == "rem":
        out.append(dataclasses.replace(o, tags=(("a", 9),)))
    return out


def test_local_ops_are_signed_by_their_replica_over_every_field() -> None:
    a = mk("a")
    a.add("s", "x")
    rem = a.remove("s", "x")
    assert rem is not None
    ops = [rem, a.set("k", {"b": 1.5, "a": [None, True]}), a.delete("k"), a.incr("n", -3)]
    public = bytes(key_for("a").verify_key)
    for o in [*a.delta_since({})[:1], *ops]:
        verify_op(o, public)
        assert signed_message(o).startswith(OP_DOMAIN)
        for changed in _variants(o):
            with pytest.raises(BadSignatureError):
                verify_op(changed, public)
        with pytest.raises(BadSignatureError):  # another replica's key
            verify_op(o, bytes(key_for("b").verify_key))
    renamed = dataclasses.replace(ops[1], replica="b")  # the replica is covered too
    with pytest.raises(BadSignatureError):
        verify_op(renamed, public)


def test_the_signature_is_domain_separated() -> None:
    """The same digest signed under the block domain is no op signature."""
    op = mk("a").set("k", 1)
    digest = signed_message(op)[len(OP_DOMAIN) :]
    as_block = key_for("a").sign(BLOCK_DOMAIN + digest).signature
    with pytest.raises(BadSignatureError):
        verify_op(dataclasses.replace(op, sig=as_block), bytes(key_for("a").verify_key))


def test_a_replica_without_its_key_cannot_write_nor_one_without_members_apply() -> None:
    with pytest.raises(ConflictError):
        SharedState("a", directory=directory).set("k", 1)
    with pytest.raises(ConflictError):
        SharedState("b", signer=key_for("b")).apply([mk("a").set("k", 1)])


# -- refusals ----------------------------------------------------------------------------


def test_forged_bad_tampered_and_unknown_ops_are_refused_and_the_rest_kept() -> None:
    dir_ = members("a", "b", "m")
    a, m, b = replica("a", dir_), replica("m", dir_), replica("b", dir_)
    good = [a.set("k", "a1"), a.incr("n", 2), m.add("s", "x")]
    forged = Op("a", 3, 50, "set", "k", "forged by m", sig=b"")  # under a's id, m's key
    forged = dataclasses.replace(forged, sig=key_for("m").sign(signed_message(forged)).signature)
    bad_sig = dataclasses.replace(a.set("k", "a3"), sig=bytes(64))
    tampered = dataclasses.replace(m.incr("n", 1), value=1000)
    stranger = signed(Op("z", 1, 1, "set", "k", "stranger"))
    unsigned = Op("m", 9, 9, "set", "k", "unsigned")
    batch = [forged, good[0], bad_sig, tampered, good[1], stranger, unsigned, good[2]]
    got = b.receive(batch, sender="m")
    assert got.applied == 3  # nothing valid lost
    assert sorted((r.op, r.code) for r in got.refused) == [
        ("a:3", "bad_signature"),
        ("a:3", "bad_signature"),
        ("m:2", "bad_signature"),
        ("m:9", "bad_signature"),
        ("z:1", "unknown_replica"),
    ]
    assert b.get("k") == "a1" and b.counter("n") == 2 and b.members("s") == {"x"}
    assert b.state_vector() == {"a": 2, "m": 1} and b.held_count() == 0
    assert all(op.sig for op in b.delta_since({}))  # nothing forged to send on
    # the genuine ops still arrive afterwards
    assert b.apply(a.delta_since(b.state_vector()) + m.delta_since(b.state_vector())) == 2
    assert b.get("k") == "a3" and b.counter("n") == 3


def test_a_forged_op_ahead_of_a_gap_is_not_held_either() -> None:
    dir_ = members("a", "b")
    b = replica("b", dir_)
    ahead = dataclasses.replace(signed(Op("a", 5, 5, "set", "k", 1)), value=2)
    assert codes(b, [ahead]) == ["bad_signature"]
    assert b.held_count() == 0 and b.missing() == {}


def test_tampered_on_the_wire_is_refused() -> None:
    a, b = mk("a"), mk("b")
    frame = json.loads(encode_ops([a.set("k", "true value"), a.set("j", 1)]))
    frame["ops"][0][-1] = "a lie"
    got = b.receive(decode_ops(json.dumps(frame).encode()), sender="a")
    assert [r.code for r in got.refused] == ["bad_signature"]
    assert got.applied == 0 and b.held_count() == 1  # the second waits for the first
    assert b.apply(a.delta_since(b.state_vector())) == 2 and b.get("k") == "true value"


def test_old_and_truncated_frames_are_frame_errors() -> None:
    a = mk("a")
    data = encode_ops([a.set("k", 1), a.add("s", "x")])
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(FrameError):
            decode_ops(data[:cut])
    old = {"v": 1, "replicas": ["a"], "ops": [[0, 1, 1, "set", "k", 1]]}
    with pytest.raises(FrameError, match="format 1"):
        decode_ops(json.dumps(old).encode())
    with pytest.raises(FrameError, match="unsigned"):
        encode_ops([Op("a", 1, 1, "set", "k", 1)])


# -- revocation --------------------------------------------------------------------------


def test_a_revoked_replica_is_refused_directly_and_taken_when_forwarded() -> None:
    r = replica("r", members("r"))
    ops = [r.set("k", "from r"), r.incr("n", 1)]
    b = replica("b", members("b", revoked=("r",)))
    assert codes(b, ops, sender="r") == ["replica_revoked", "replica_revoked"]
    assert b.state_vector() == {}
    assert codes(b, ops, sender="c") == [] and b.get("k") == "from r"
    forged = dataclasses.replace(r.set("k", "late"), value="changed")
    assert codes(b, [forged], sender="c") == ["bad_signature"]  # still its key


def test_devices_that_learn_of_a_revocation_at_different_times_converge() -> None:
    """R writes; A already knows R is revoked, B does not yet. R reaches both directly:
    A refuses, B takes. B forwards to A, which takes R's ops from B: same state."""
    r = replica("r", members("r"))
    early = [r.set("k", 1), r.add("s", "x")]
    knows: dict[str, ReplicaKey] = {
        n: ReplicaKey(bytes(key_for(n).verify_key)) for n in ("a", "b")
    } | {"r": ReplicaKey(bytes(key_for("r").verify_key), active=False)}
    learns: dict[str, ReplicaKey] = {
        n: ReplicaKey(bytes(key_for(n).verify_key)) for n in ("a", "b", "r")
    }
    a, b = replica("a", knows.get), replica("b", learns.get)
    for s in (a, b):
        s.apply(early, sender="r")  # before the revocation: both take them
    late = [r.set("k", 2), r.incr("n", 5)]
    assert codes(a, late, sender="r") == ["replica_revoked"] * 2
    assert codes(b, late, sender="r") == []
    b.set("k", 3)
    a.incr("n", 1)
    learns["r"] = knows["r"]  # B learns of the revocation now
    for _ in range(2):
        a.apply(b.delta_since(a.state_vector()), sender="b")
        b.apply(a.delta_since(b.state_vector()), sender="a")
    assert a.state_vector() == b.state_vector() == {"r": 4, "a": 1, "b": 1}
    assert (a.get("k"), a.counter("n"), a.members("s")) == (3, 6, {"x"})
    assert (b.get("k"), b.counter("n"), b.members("s")) == (3, 6, {"x"})
    assert codes(a, [r.set("k", 4)], sender="r") == ["replica_revoked"]  # and nothing new


# -- gossip: refusals recorded, unknown replicas asked for again ---------------------------


def test_gossip_records_refusals_and_asks_again_once_a_replica_is_a_member() -> None:
    table = {n: ReplicaKey(bytes(key_for(n).verify_key)) for n in ("a", "b")}
    a, b = replica("a", directory), replica("b", table.get)
    seen: list[tuple[str, str, str]] = []
    ga, gb = StateGossip(a), StateGossip(b, on_refused=lambda *r: seen.append(r))
    stranger = replica("n", directory)
    news = [stranger.set("k", "new member"), stranger.incr("c", 1)]
    a.apply(news)
    forged = dataclasses.replace(a.set("j", 1), sig=bytes(64))
    out = gb.handle("a", b"O" + encode_ops([*news, forged]), now=0)
    assert out == [] and b.state_vector() == {}
    assert gb.rejected == 3 and gb.refused == {"a": 3}
    assert (
        seen
        == gb.rejections
        == [
            ("a", "n:1", "unknown_replica"),
            ("a", "n:2", "unknown_replica"),
            ("a", "a:1", "bad_signature"),
        ]
    )
    gb.handle("a", b"O" + json.dumps({"v": 1, "replicas": [], "ops": []}).encode(), now=0)
    assert gb.rejections[-1] == ("a", "", "bad_frame") and gb.refused == {"a": 4}
    gb.peer_up("a", 0)
    assert [m for m in gb.tick(10) if m[1][:1] == b"V"] == []  # n still unknown
    table["n"] = ReplicaKey(bytes(key_for("n").verify_key))  # n admitted
    asks = gb.tick(20)
    assert [p for p, m in asks if m[:1] == b"V"] == ["a"]
    ga.peer_up("b", 0)
    for _peer, msg in asks:
        for _to, reply in ga.handle("b", msg, now=30):
            gb.handle("a", reply, now=30)
    assert b.get("k") == "new member" and b.counter("c") == 1


def test_the_store_directory_reads_members_revocations_and_new_devices(
    store: BlockStore, other_keys: DeviceKeys
) -> None:
    now = [0.0]
    lookup = store_directory(store, clock=lambda: now[0])
    me = store.devices()[0]
    assert lookup(me.device_id) == ReplicaKey(me.sign_key, True)
    assert lookup(other_keys.device_id) is None
    store.add_device(device_for(other_keys, role="member"))
    assert lookup(other_keys.device_id) is None  # read 0 s ago
    now[0] = 0.2
    assert lookup(other_keys.device_id) == ReplicaKey(other_keys.sign_public, True)
    store.revoke_device(other_keys.device_id, at=1, record="{}")
    now[0] = 1.5
    assert lookup(other_keys.device_id) == ReplicaKey(other_keys.sign_public, False)


# -- storage: migration 8 ------------------------------------------------------------------


def test_migration_8_signs_own_old_ops_and_refetches_others(store_url: str) -> None:
    """A database from before signatures: ops stored unsigned by version 7. On open,
    the replica signs its own and forgets b's; b's come back signed from b."""
    a_then, b_then = mk("a"), mk("b")
    own = [a_then.set("k", "mine"), a_then.add("s", "x"), a_then.incr("n", 2)]
    theirs = [b_then.incr("n", 5), b_then.set("j", [1])]
    db = Database(store_url)
    try:
        assert migrate(db, migrations=[m for m in MIGRATIONS if m.version <= 7])[-1] == 7
        old = SqlOpStore(db)

        def write_v7(conn: object) -> None:
            from kiana.sync.crdt_wire import body, dumps

            for op in own + theirs:
                conn.execute(  # type: ignore[attr-defined]
                    "INSERT INTO crdt_ops (replica, seq, lamport, op, held) VALUES (?, ?, ?, ?, 0)",
                    (op.replica, op.seq, op.lamport, dumps(body(op))),
                )

        db.write(write_v7)
        assert migrate(db) == [8, 9]
        rows = db.read(lambda c: c.all("SELECT replica, sig FROM crdt_ops ORDER BY replica, seq"))
        assert [(r, s) for r, s in rows] == [("a", None)] * 3 + [("b", None)] * 2
        reader = SharedState("a", store=old)  # read-only (no key): repairs nothing of its own
        assert reader.get("k") == "mine" and reader.counter("n") == 2
        a = mk("a", store=SqlOpStore(db))
        assert a.state_vector() == {"a": 3} and a.counter("n") == 2
        rows = db.read(lambda c: c.all("SELECT replica, seq, sig FROM crdt_ops ORDER BY seq"))
        assert [(r, s) for r, s, _ in rows] == [("a", 1), ("a", 2), ("a", 3)]
        for op in a.delta_since({}):
            verify_op(op, bytes(key_for("a").verify_key))
        assert [bytes.fromhex(str(r[2])) for r in rows] == [op.sig for op in own]
        assert a.apply(b_then.delta_since(a.state_vector()), sender="b") == 2
        again = mk("a", store=SqlOpStore(db))
        assert again.counter("n") == 7 and again.get("j") == [1]
        assert decode_ops(encode_ops(again.delta_since({}))) == again.delta_since({})
    finally:
        db.close()


def test_a_stored_signature_of_the_wrong_length_is_a_store_error(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        migrate(db)
        mk("a", store=SqlOpStore(db)).set("k", 1)
        db.write(lambda c: c.execute("UPDATE crdt_ops SET sig = 'abcd'"))
        with pytest.raises(StoreError):
            mk("a", store=SqlOpStore(db))
    finally:
        db.close()


def test_memory_store_repairs_unsigned_ops_too() -> None:
    store = MemoryOpStore()
    store.save([Op("a", 1, 1, "set", "k", 1), Op("b", 1, 2, "incr", "n", 4)], [])
    a = mk("a", store=store)
    assert a.state_vector() == {"a": 1}
    assert [op.sig != b"" for op, _h in store.load()] == [True]


def test_signing_keys_are_per_replica() -> None:
    assert bytes(key_for("a").verify_key) != bytes(key_for("b").verify_key)
    assert isinstance(key_for("a"), SigningKey)
