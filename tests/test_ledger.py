"""The mind's ledger: sealing, verification, fork choice, reorgs, checkpoints, storage."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiana.identity import DeviceKeys, Genesis, make_genesis, sign_membership
from kiana.ledger import (
    DEFAULT_PARAMS,
    Accepted,
    Ledger,
    LedgerBlock,
    MemoryLedgerStore,
    Orphan,
    Params,
    Record,
    Rejected,
    Reorg,
    SqlLedgerStore,
    block_json,
    commit_record,
    erase_record,
    genesis_block,
    genesis_state,
    member_record,
    merkle_root,
    parse_block,
    parse_record,
    seal,
    verify_block,
    verify_chain,
)
from kiana.ledger.errors import (
    BadCheckpointError,
    BadDifficultyError,
    BadLedgerSignatureError,
    BadLinkError,
    BadMerkleRootError,
    BadTimeError,
    InvalidRecordError,
    LedgerError,
    MalformedLedgerError,
    NotAuthorityError,
    SignerLimitError,
    UnsupportedRecordError,
)
from kiana.ledger.state import ChainState, active_window
from kiana.store.db import Database
from kiana.store.migrations import migrate

P = DEFAULT_PARAMS.period_ms
T0 = 1_704_067_200_000


@functools.cache
def devs() -> tuple[DeviceKeys, DeviceKeys, DeviceKeys]:
    return DeviceKeys.generate(), DeviceKeys.generate(), DeviceKeys.generate()


@functools.cache
def mind() -> Genesis:
    return make_genesis(
        devs()[0], name="home", device_name="laptop", created=T0, person="p-aaaaaaaa"
    )


def bid(n: object) -> str:
    return hashlib.sha256(f"block {n}".encode()).hexdigest()


def membership(
    by: DeviceKeys, who: DeviceKeys, *, action: str = "add", role: str = "authority"
) -> Record:
    r = sign_membership(
        by,
        mind=mind().mind_id,
        action=action,
        device=who.device_id,
        sign_key=who.sign_public,
        box_key=who.box_public,
        role=role,
        person="p-aaaaaaaa",
        name="device",
        created=T0,
    )
    return member_record(r)


def step(ledger: Ledger, keys: DeviceKeys, *records: Record) -> LedgerBlock:
    """Add ``records`` and seal them at the earliest time ``keys`` may."""
    ledger.add_records(records)
    at = ledger.ready_at(keys.device_id)
    assert at is not None
    block = ledger.propose(keys, at)
    assert block is not None
    return block


def resign(keys: DeviceKeys, block: LedgerBlock, **changes: object) -> LedgerBlock:
    draft = replace(block, sig="", **changes)  # type: ignore[arg-type]
    return replace(draft, sig=keys.signing.sign(draft.signed_message()).signature.hex())


def state_at(ledger: Ledger, block: LedgerBlock) -> ChainState:
    """Replay the head chain up to ``block`` (inclusive)."""
    state = genesis_state(mind())
    prev = None
    for b in ledger.chain():
        if prev is not None:
            state = verify_block(b, prev, state)
        prev = b
        if b.hash == block.hash:
            return state
    raise AssertionError("block not on the head chain")


def trio() -> Ledger:
    """A ledger whose block 1 (sealed by A) makes B and C authorities."""
    a, b, c = devs()
    ledger = Ledger(mind())
    step(ledger, a, membership(a, b), membership(a, c))
    return ledger


# -- records and Merkle roots ----------------------------------------------------------


def test_record_ids_and_round_trip() -> None:
    a, b, _ = devs()
    records = [commit_record(bid(1)), erase_record(bid(2), bid(1)), membership(a, b)]
    assert len({r.id for r in records}) == 3
    for r in records:
        assert parse_record(r.canonical()) == r
        assert parse_record(r.canonical()).id == r.id == hashlib.sha256(r.canonical()).hexdigest()
    assert records[2].membership().device == b.device_id


def test_merkle_root() -> None:
    ids = [bid(i) for i in range(5)]
    assert merkle_root(ids) != merkle_root(ids[:4])
    assert merkle_root(ids) != merkle_root([ids[1], ids[0], *ids[2:]])
    assert merkle_root(ids[:1]) != ids[0]  # leaves are hashed with their own prefix
    assert merkle_root([]) != merkle_root([bid(0)])
    # an inner node cannot pass for a leaf: the root of [x, y] is not the root of one leaf
    assert merkle_root(ids[:2]) not in {merkle_root([i]) for i in ids}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", MalformedLedgerError),
        ("[]", MalformedLedgerError),
        ("{", MalformedLedgerError),
        ('{"v":1,"kind":"vote","block":"x"}', UnsupportedRecordError),
        ('{"v":1,"kind":"rotate"}', UnsupportedRecordError),
        ('{"v":1,"kind":"nonsense"}', MalformedLedgerError),
        ('{"v":2,"kind":"commit","block":"' + "a" * 64 + '"}', MalformedLedgerError),
        ('{"v":true,"kind":"commit","block":"' + "a" * 64 + '"}', MalformedLedgerError),
        ('{"v":1,"kind":"commit","block":"xyz"}', MalformedLedgerError),
        ('{"v":1,"kind":"commit","block":7}', MalformedLedgerError),
        ('{"v":1,"kind":"commit","block":"' + "a" * 64 + '","extra":"1"}', MalformedLedgerError),
        ('{"v":1,"kind":"erase","block":"' + "a" * 64 + '"}', MalformedLedgerError),
        ('{"v":1,"kind":"member","record":"{}"}', MalformedLedgerError),
        ("x" * 9000, MalformedLedgerError),
    ],
)
def test_garbage_records_raise_typed_errors(text: str, error: type[LedgerError]) -> None:
    with pytest.raises(error):
        parse_record(text)


def test_member_record_must_be_canonical() -> None:
    a, b, _ = devs()
    text = membership(a, b).record
    spaced = json.dumps(json.loads(text), indent=1)
    with pytest.raises(MalformedLedgerError, match="canonical"):
        Record("member", record=spaced)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_garbage_blocks_raise_only_ledger_errors(data: str | bytes) -> None:
    with pytest.raises(LedgerError):
        parse_block(data)


def test_garbage_block_fields() -> None:
    ledger = Ledger(mind())
    block = step(ledger, devs()[0], commit_record(bid(1)))
    good = block.to_dict()
    assert parse_block(block_json(block)) == block
    for key, value in [
        ("height", -1),
        ("height", True),
        ("time", "now"),
        ("parent", "zz"),
        ("signer", "Alice"),
        ("sig", "00"),
        ("checkpoint", "abc"),
        ("checkpoint", ["nobody"]),
        ("records", {}),
        ("records", [{"v": 1, "kind": "vote"}]),
        ("v", 2),
    ]:
        with pytest.raises(LedgerError):
            parse_block(json.dumps({**good, key: value}))
    with pytest.raises(MalformedLedgerError):
        parse_block(json.dumps({k: v for k, v in good.items() if k != "sig"}))


# -- sealing and verifying one block ---------------------------------------------------


def test_seal_and_verify() -> None:
    a = devs()[0]
    ledger = Ledger(mind())
    assert ledger.head == genesis_block(mind()) and ledger.authorities() == (a.device_id,)
    r1, r2 = commit_record(bid(1)), erase_record(bid(2), bid(1))
    assert ledger.propose(a, T0 + P) is None  # nothing pending
    assert ledger.add_records([r1, r2, r1]) == 2
    assert ledger.propose(a, T0 + P - 1) is None  # too early
    block = ledger.propose(a, T0 + P)
    assert block is not None and block.height == 1 and block.difficulty == 2
    assert block.records == (r1, r2) and block.merkle == merkle_root([r1.id, r2.id])
    assert ledger.head == block and ledger.pending == ()
    assert ledger.is_committed(r1.id) and ledger.is_committed(r2.id)
    assert ledger.add_records([r1]) == 0
    verify_block(block, genesis_block(mind()), genesis_state(mind()))
    assert verify_chain(ledger.chain(), mind()) == verify_chain(
        [block_json(b) for b in ledger.chain()], mind()
    )
    assert verify_chain(ledger.chain(), mind()).ok


def test_forged_signature() -> None:
    a, b, _ = devs()
    ledger = Ledger(mind())
    block = step(ledger, a, commit_record(bid(1)))
    root, state = genesis_block(mind()), genesis_state(mind())
    for forged in [
        replace(block, sig=block.sig[:-2] + ("00" if block.sig[-2:] != "00" else "11")),
        resign(b, block),  # signed by another device in A's name
        replace(block, time=block.time + 1),  # header changed after signing
    ]:
        with pytest.raises(BadLedgerSignatureError):
            verify_block(forged, root, state)
        assert isinstance(Ledger(mind()).receive(forged)[0], Rejected)


def test_non_authority_signer() -> None:
    b = devs()[1]
    fake = replace(genesis_state(mind()), authorities=((b.device_id, b.sign_public),))
    block = seal(b, genesis_block(mind()), [commit_record(bid(1))], T0 + P, fake)
    with pytest.raises(NotAuthorityError):
        verify_block(block, genesis_block(mind()), genesis_state(mind()))
    with pytest.raises(NotAuthorityError):
        seal(b, genesis_block(mind()), [], T0 + P, genesis_state(mind()))
    assert Ledger(mind()).propose(b, T0 + 10 * P) is None


def test_wrong_merkle_root_parent_difficulty_time() -> None:
    a = devs()[0]
    ledger = Ledger(mind())
    b1 = step(ledger, a, commit_record(bid(1)))
    b2 = step(ledger, a, commit_record(bid(2)))
    state1 = state_at(ledger, b1)
    cases: list[tuple[LedgerBlock, type[LedgerError]]] = [
        (resign(a, b2, merkle=merkle_root([bid(9)])), BadMerkleRootError),
        (replace(b2, records=(commit_record(bid(3)),)), BadMerkleRootError),
        (resign(a, b2, parent=b1.parent), BadLinkError),
        (resign(a, b2, height=3), BadLinkError),
        (resign(a, b2, difficulty=1), BadDifficultyError),
        (resign(a, b2, time=b1.time + P - 1), BadTimeError),
        (resign(a, b2, time=b1.time), BadTimeError),
        (resign(a, b2, checkpoint=(a.device_id,)), BadCheckpointError),
        (
            resign(
                a,
                b2,
                records=(*b2.records, *b2.records),
                merkle=merkle_root([b2.records[0].id] * 2),
            ),
            MalformedLedgerError,
        ),
        (
            resign(a, b2, records=b1.records, merkle=b1.merkle),
            InvalidRecordError,
        ),  # already on chain
    ]
    for bad, error in cases:
        with pytest.raises(error):
            verify_block(bad, b1, state1, committed={r.id for r in b1.records}.__contains__)
        fresh = Ledger(mind())
        fresh.receive(b1)
        events = fresh.receive(bad, T0 + 100 * P)
        assert isinstance(events[0], Rejected | Orphan), (error, events)
        assert fresh.head == b1


def test_block_from_the_future_and_orphans() -> None:
    a = devs()[0]
    ledger = Ledger(mind())
    b1 = step(ledger, a, commit_record(bid(1)))
    b2 = step(ledger, a, commit_record(bid(2)))
    other = Ledger(mind())
    [event] = other.receive(b1, now=b1.time - DEFAULT_PARAMS.max_drift_ms - 1)
    assert isinstance(event, Rejected) and event.code == BadTimeError.code
    assert other.receive(b2, now=b2.time) == [Orphan(b2.hash, b1.hash)]
    events = other.receive(b1, now=b2.time)
    assert events == [Accepted(b1.hash, 1, head=True), Accepted(b2.hash, 2, head=True)]
    assert other.receive(b2) == []
    assert other.head == b2 and other.pending == ()


# -- authorities, turns and the signer limit -------------------------------------------


def test_member_record_adds_an_authority_that_then_seals_in_turn() -> None:
    a, b, c = devs()
    ledger = trio()
    assert set(ledger.authorities()) == {a.device_id, b.device_id, c.device_id}
    for _ in range(6):
        height = ledger.head.height + 1
        in_turn = sorted(ledger.authorities())[height % 3]
        keys = next(k for k in devs() if k.device_id == in_turn)
        block = step(ledger, keys, commit_record(bid(height)))
        assert block.signer == in_turn and block.difficulty == 2
        assert block.time == ledger.block(block.parent).time + P  # type: ignore[union-attr]
    assert verify_chain(ledger.chain(), mind()).ok


def test_member_role_cannot_seal_and_outsider_cannot_admit() -> None:
    a, b, c = devs()
    ledger = Ledger(mind())
    step(ledger, a, membership(a, b, role="member"))
    assert ledger.authorities() == (a.device_id,) and ledger.ready_at(b.device_id) is None
    ledger.add_records([membership(b, c)])  # b is no authority: its record never seals
    assert ledger.propose(a, T0 + 100 * P) is None
    fake = seal(a, ledger.head, [membership(b, c)], T0 + 100 * P, state_at(ledger, ledger.head))
    with pytest.raises(InvalidRecordError, match="not an authority"):
        verify_block(fake, ledger.head, state_at(ledger, ledger.head))


def test_revoked_authority_blocks_are_rejected() -> None:
    a, b, _ = devs()
    ledger = Ledger(mind())
    step(ledger, a, membership(a, b))
    before_revoke = ledger.head
    b_state = state_at(ledger, before_revoke)
    step(ledger, a, membership(a, b, action="revoke"))
    assert ledger.authorities() == (a.device_id,)
    late = seal(b, ledger.head, [commit_record(bid(1))], ledger.head.time + 10 * P, b_state)
    [event] = ledger.receive(late)
    assert isinstance(event, Rejected) and event.code == NotAuthorityError.code
    # the old "add" record cannot bring b back
    again = seal(
        a, ledger.head, [membership(a, b)], ledger.head.time + P, state_at(ledger, ledger.head)
    )
    with pytest.raises(InvalidRecordError):
        verify_block(
            again, ledger.head, state_at(ledger, ledger.head), committed=ledger.is_committed
        )
    # nor can the last authority be revoked
    last = seal(
        a,
        ledger.head,
        [membership(a, a, action="revoke")],
        ledger.head.time + P,
        state_at(ledger, ledger.head),
    )
    with pytest.raises(InvalidRecordError, match="last authority"):
        verify_block(last, ledger.head, state_at(ledger, ledger.head))


def test_signer_limit_while_others_are_active() -> None:
    a, b, c = devs()
    ledger = trio()
    step(ledger, b, commit_record(bid("b")))
    step(ledger, c, commit_record(bid("c")))
    mine = step(ledger, a, commit_record(bid("a")))
    state = state_at(ledger, mine)
    # b and c are active: with three authorities a may seal only one of any two blocks
    too_soon = seal(a, mine, [commit_record(bid("again"))], mine.time + 2 * P, state)
    with pytest.raises(SignerLimitError):
        verify_block(too_soon, mine, state)
    ledger.add_records([commit_record(bid("again"))])
    assert ledger.propose(a, mine.time + 2 * P) is None
    at = ledger.ready_at(a.device_id)
    window = active_window(state, DEFAULT_PARAMS)
    assert at is not None and at > mine.time + 2 * P and at <= mine.time + window
    assert ledger.propose(a, at) is not None  # once b and c have been quiet for the window
    # b, which did not seal the last block, may seal out of turn right away
    assert ledger.ready_at(b.device_id) is not None


def test_lone_authority_progresses() -> None:
    a, b, _ = devs()
    ledger = Ledger(mind())
    step(ledger, a, membership(a, b))
    step(ledger, b, commit_record(bid("b")))  # b seals once, then goes to sleep
    window = 4 * 2 * P
    for i in range(20):
        parent = ledger.head
        block = step(ledger, a, commit_record(bid(i)))
        assert block.signer == a.device_id
        assert block.time - parent.time <= window  # a bounded wait, never a stall
    assert ledger.head.height == 22 and verify_chain(ledger.chain(), mind()).ok
    # clique's plain limit (floor(2/2)+1 = 2) would have stopped a at the second block
    assert any(
        x.signer == y.signer == a.device_id
        for x, y in itertools.pairwise(ledger.chain())
        if x.height > 2
    )


# -- fork choice and reorgs ------------------------------------------------------------


def _two_sided_fork() -> tuple[Ledger, Ledger, list[LedgerBlock]]:
    """A and B share block 1 (B admitted), then each seals alone on its side."""
    a, b, _ = devs()
    la = Ledger(mind())
    step(la, a, membership(a, b))
    lb = Ledger(mind())
    lb.receive(la.head)
    blocks = []
    for i in range(2):
        blocks.append(step(la, a, commit_record(bid(f"a{i}"))))
        blocks.append(step(lb, b, commit_record(bid(f"b{i}"))))
    return la, lb, blocks


def test_forks_converge_on_the_heaviest_chain_in_any_order() -> None:
    la, lb, blocks = _two_sided_fork()
    base = next(iter(itertools.islice(la.chain(), 1, 2)))
    heads = set()
    for order in itertools.permutations(blocks):
        observer = Ledger(mind())
        for blk in [base, *order]:
            observer.receive(blk)
        heads.add((observer.head.hash, observer.total_difficulty))
    assert len(heads) == 1
    for blk in blocks:
        la.receive(blk)
        lb.receive(blk)
    assert la.head == lb.head and (la.head.hash, la.total_difficulty) in heads
    assert {r.id for blk in la.chain() for r in blk.records} | {r.id for r in la.pending} == {
        r.id for blk in [base, *blocks] for r in blk.records
    }


def test_equal_weight_tie_break_is_the_lower_hash() -> None:
    a = devs()[0]
    ledger = Ledger(mind())
    root = ledger.head
    forks = [
        seal(a, root, [commit_record(bid(i))], T0 + P, genesis_state(mind())) for i in range(4)
    ]
    assert len({f.difficulty for f in forks}) == 1
    for order in itertools.permutations(forks):
        observer = Ledger(mind())
        events = [e for f in order for e in observer.receive(f)]
        assert observer.head.hash == min(f.hash for f in forks)
        assert {r.id for r in observer.pending} == {
            f.records[0].id for f in forks if f.hash != observer.head.hash
        }
        assert sum(isinstance(e, Reorg) for e in events) <= 3


def test_reorg_returns_records_and_they_are_sealed_again() -> None:
    a, b, c = devs()
    la = trio()
    lb = Ledger(mind())
    lb.receive(la.head)
    lost = commit_record(bid("lost"))
    light = step(la, a, lost)  # out of turn or in turn, one block
    heavy = [step(lb, k, commit_record(bid(f"heavy{i}"))) for i, k in enumerate([b, c, b])]
    events = [e for blk in heavy for e in la.receive(blk)]
    [reorg] = [e for e in events if isinstance(e, Reorg)]
    # three blocks weigh at least 3 > 2; fewer of them may already outweigh a's one
    assert reorg.old_head == light.hash and reorg.new_head in {blk.hash for blk in heavy}
    assert la.head == heavy[-1]
    assert reorg.returned == (lost,) and la.pending == (lost,)
    assert not la.is_committed(lost.id)
    again = step(la, a)
    assert again.records == (lost,) and la.is_committed(lost.id)
    lb.receive(again)
    assert lb.head == la.head and lb.is_committed(lost.id)


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(["record", "record", "seal", "seal", "send", "tick"]),
            st.integers(0, 2),
        ),
        min_size=8,
        max_size=40,
    )
)
def test_no_record_is_ever_lost(schedule: list[tuple[int, str, int]]) -> None:
    keys = devs()
    first = trio()
    ledgers = [first, Ledger(mind()), Ledger(mind())]
    for other in ledgers[1:]:
        other.receive(first.head)
    now = first.head.time
    added: set[str] = set()

    def sync() -> None:
        for x, y in itertools.permutations(ledgers, 2):
            for blk in list(x.chain()):
                y.receive(blk, now)

    for n, (who, action, to) in enumerate(schedule):
        ledger = ledgers[who]
        if action == "record":
            record = commit_record(bid(n))
            ledger.add_records([record])
            added.add(record.id)
        elif action == "seal" and ledger.pending:
            now = max(now, ledger.ready_at(keys[who].device_id) or now)
            assert ledger.propose(keys[who], now) is not None
        elif action == "send":
            for blk in list(ledger.chain()):
                ledgers[to].receive(blk, now)
        elif action == "tick":
            now += P
    sync()
    for _ in range(100):
        busy = [i for i, x in enumerate(ledgers) if x.pending]
        if not busy:
            break
        i = busy[0]
        now = max(now, ledgers[i].ready_at(keys[i].device_id) or now)
        assert ledgers[i].propose(keys[i], now) is not None
        sync()
    heads = {x.head.hash for x in ledgers}
    assert len(heads) == 1
    for x in ledgers:
        on_chain = [r.id for blk in x.chain() for r in blk.records if r.kind == "commit"]
        assert sorted(on_chain) == sorted(added)  # each record exactly once
        assert x.pending == ()
        assert verify_chain(x.chain(), mind()).ok


# -- whole-chain verification and checkpoints ------------------------------------------


def test_verify_chain_points_at_the_first_bad_link() -> None:
    a = devs()[0]
    ledger = Ledger(mind())
    for i in range(10):
        step(ledger, a, commit_record(bid(i)), commit_record(bid(f"{i}x")))
    blocks = list(ledger.chain())
    assert verify_chain(blocks, mind()) == verify_chain(blocks, mind())
    assert verify_chain(blocks, mind()).ok and verify_chain(blocks, mind()).height == 10
    tampered = list(blocks)
    tampered[6] = replace(blocks[6], records=(commit_record(bid("evil")), blocks[6].records[1]))
    result = verify_chain(tampered, mind())
    assert not result.ok and result.first_bad_height == 6 and result.height == 5
    assert result.code == BadMerkleRootError.code
    lines = [block_json(b) for b in blocks]
    lines[4] = lines[4].replace('"time":', '"time":1')
    result = verify_chain(lines, mind())
    assert (result.first_bad_height, result.code) == (4, BadLedgerSignatureError.code)
    lines[2] = "garbage"
    assert verify_chain(lines, mind()).first_bad_height == 2
    assert verify_chain(blocks[:3] + blocks[4:], mind()).first_bad_height == 3
    assert verify_chain(blocks[1:], mind()).first_bad_height == 0
    other = make_genesis(a, name="other", device_name="laptop", created=T0, person="p-aaaaaaaa")
    assert verify_chain(blocks, other).first_bad_height == 0
    assert verify_chain([], mind()).ok is False


def test_checkpoints_carry_the_authority_list() -> None:
    a, b, _ = devs()
    params = Params(epoch=4)
    ledger = Ledger(mind(), params=params)
    step(ledger, a, membership(a, b))
    for i in range(8):
        step(ledger, a, commit_record(bid(i)))
    blocks = list(ledger.chain())
    assert blocks[4].checkpoint == blocks[8].checkpoint == tuple(sorted([a.device_id, b.device_id]))
    assert all(blk.checkpoint == () for blk in blocks[1:] if blk.height % 4)
    assert verify_chain(blocks, mind(), params).ok
    assert not verify_chain(blocks, mind()).ok  # another epoch: another chain
    for bad in [(a.device_id,), ()]:
        tampered = list(blocks)
        tampered[8] = resign(a, blocks[8], checkpoint=bad)
        result = verify_chain(tampered, mind(), params)
        assert (result.first_bad_height, result.code) == (8, BadCheckpointError.code)


# -- persistence -----------------------------------------------------------------------


def _fill(ledger: Ledger) -> None:
    a, b, _ = devs()
    step(ledger, a, membership(a, b))
    step(ledger, b, commit_record(bid(1)))
    step(ledger, a, commit_record(bid(2)), erase_record(bid(3), bid(2)))
    parent = ledger.block(ledger.head.parent)
    assert parent is not None
    side = seal(a, parent, [commit_record(bid("side"))], ledger.head.time, state_at(ledger, parent))
    ledger.receive(side)
    ledger.add_records([commit_record(bid(4)), commit_record(bid(5))])


def test_memory_store_round_trip() -> None:
    store = MemoryLedgerStore()
    ledger = Ledger(mind(), store=store)
    _fill(ledger)
    again = Ledger.open(store, mind())
    assert list(again.chain()) == list(ledger.chain())
    assert again.pending == ledger.pending and len(again.pending) >= 3


def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'kiana.db'}")
    try:
        migrate(db)
        ledger = Ledger(mind(), store=SqlLedgerStore(db))
        _fill(ledger)
        step(ledger, devs()[0])  # seals the pending ones: they leave the table
        ledger.add_records([commit_record(bid(6))])
        expected = (list(ledger.chain()), ledger.pending, ledger.total_difficulty)
    finally:
        db.close()
    db = Database(f"sqlite:///{tmp_path / 'kiana.db'}")
    try:
        again = Ledger.open(SqlLedgerStore(db), mind())
        assert (list(again.chain()), again.pending, again.total_difficulty) == expected
        assert again.pending == (commit_record(bid(6)),)
        rows = db.read(lambda conn: conn.all("SELECT COUNT(*) FROM ledger_blocks"))
        assert rows == [(5,)]  # four on the head chain and the side block
        # a tampered row is not taken: the chain stops before it
        db.write(
            lambda conn: conn.execute(
                "UPDATE ledger_blocks SET data = replace(data, '\"time\":', '\"time\":1')"
                " WHERE height = 3"
            )
        )
        cut = Ledger.open(SqlLedgerStore(db), mind())
        assert cut.head.height == 2
    finally:
        db.close()
