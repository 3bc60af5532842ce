"""Bulk sync paths: records checked a slice ahead on a worker thread, answers sent in bursts,
and ``BlockStore.put_batches`` (one transaction for a whole message). Real stores, real keys."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.mind_helpers import make_mind

from kiana.blocks import Block, make_block, make_tombstone
from kiana.errors import BadSignatureError, IdMismatchError, StoreError
from kiana.identity.keys import DeviceKeys
from kiana.node import Node, now_ms
from kiana.store import PutResult
from kiana.sync import engine as engine_mod
from kiana.sync import intake
from kiana.sync.engine import SyncEngine
from kiana.sync.policy import admission, may_erase


@pytest.fixture
def mind(tmp_path: Path):  # type: ignore[no-untyped-def]
    homes = make_mind(tmp_path, ["laptop", "phone", "tablet"])
    nodes = {name: Node.open(s) for name, s in homes.items()}
    for node in nodes.values():
        node.auto_embed = False
    yield nodes
    for node in nodes.values():
        node.close()


def engine_for(node: Node, *, verify_threads: int = 1) -> SyncEngine:
    me = node.store.device(node.device_id)
    assert me is not None
    engine = SyncEngine(
        node.store,
        me=node.device_id,
        same_person=lambda _peer: True,
        admit=admission(node.store, me.person),
        may_erase=may_erase(node.store),
        verify_threads=verify_threads,
    )
    engine.load()
    return engine


def line(item: object, kind: str = "block") -> str:
    return json.dumps({"type": kind, "record": item})


def stored_ids(node: Node) -> set[str]:
    return {b.id for b in node.store.iter_blocks()}


def test_a_large_message_is_checked_on_a_worker_and_stored_as_inline(mind) -> None:  # type: ignore[no-untyped-def]
    """The same 460-line message, with bad records, a duplicate, a tombstone and a block
    it erases, gives the same store and the same rejections with or without the pool."""
    laptop, phone, tablet = mind["laptop"], mind["phone"], mind["tablet"]
    blocks = [laptop.new_block(body=f"bulk note {i}") for i in range(450)]
    stranger = DeviceKeys.generate()
    foreign = make_block(stranger.signing, stranger.device_id, kind="fact", body="x", created=1)
    erased = blocks[10]
    tomb = make_tombstone(laptop.keys.signing, laptop.device_id, erases=erased.id, created=now_ms())
    lines = [line(b.to_dict()) for b in blocks[:200]]
    lines += [
        line(foreign.to_dict()),  # unknown author
        line(blocks[5].to_dict() | {"body": "tampered"}),  # id does not match
        line(blocks[6].to_dict() | {"sig": "0" * 128}),  # bad signature
        "not json",
        line({"v": 1}),  # malformed
        line(blocks[7].to_dict()),  # duplicate in the same message
        line(tomb.to_dict(), "tombstone"),
        line(erased.to_dict()),  # erased above: refused silently
    ]
    lines += [line(b.to_dict()) for b in blocks[200:]]
    body = b"B" + "\n".join(lines).encode()
    assert len(lines) >= intake.POOL_MIN

    pooled, inline = engine_for(phone, verify_threads=1), engine_for(tablet, verify_threads=0)
    seen_threads: set[str] = set()
    original = intake.check_signatures

    def spy(chunk, lookup):  # type: ignore[no-untyped-def]
        seen_threads.add(threading.current_thread().name)
        return original(chunk, lookup)

    intake.check_signatures = spy  # type: ignore[assignment]
    try:
        assert pooled.receive(laptop.device_id, body, now_ms()) == []
        assert inline.receive(laptop.device_id, body, now_ms()) == []
    finally:
        intake.check_signatures = original  # type: ignore[assignment]
        pooled.close()
    assert any(name.startswith("kiana-sync-verify") for name in seen_threads), seen_threads
    assert threading.current_thread().name in seen_threads  # the inline engine
    want = {b.id for b in blocks} - {erased.id}
    assert stored_ids(phone) == stored_ids(tablet) == want
    assert phone.store.tombstone_for(erased.id) == tomb == tablet.store.tombstone_for(erased.id)
    assert pooled.rejections == inline.rejections
    reasons = [(rid, why) for _, rid, why in pooled.rejections]
    assert [why for _, why in reasons] == [
        "unknown_author",
        IdMismatchError.code,
        BadSignatureError.code,
        "malformed_block",
        "malformed_block",
    ], reasons
    assert reasons[0][0] == foreign.id and reasons[1][0] == blocks[5].id
    [p], [i] = pooled.status(), inline.status()
    assert (
        p["received"] == i["received"] == 450 + 1
    )  # every block (one erased later), the tombstone
    assert p["rejected"] == i["rejected"] == 5


def test_a_bulk_answer_goes_a_burst_at_a_time(mind, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    laptop, phone = mind["laptop"], mind["phone"]
    blocks = [laptop.new_block(body=f"note {i} " + "x" * 200) for i in range(400)]
    laptop.store.put_many(blocks, verified=True)
    monkeypatch.setattr(engine_mod, "BATCH_BYTES", 4_000)  # ~12 records a message
    monkeypatch.setattr(engine_mod, "SEND_READ", 25)
    sender, receiver = engine_for(laptop, verify_threads=0), engine_for(phone, verify_threads=0)
    now = now_ms()
    sender.peer_up(phone.device_id, now)
    want = b"W" + b"".join(bytes.fromhex(b.id) for b in blocks)
    first = sender.receive(phone.device_id, want, now)
    assert engine_mod.SEND_BURST <= len(first) <= engine_mod.SEND_BURST + 1
    assert all(body[:1] == b"B" for _, body in first)
    state = sender.peers[phone.device_id]
    assert 0 < len(state.outgoing) < len(blocks)
    sent = list(first)
    ticks = 0
    while state.outgoing:
        ticks += 1
        now += 250
        sent += [o for o in sender.tick(now) if o[1][:1] == b"B"]
        assert ticks < 100
    assert ticks >= 2
    for _, body in sent:
        receiver.receive(laptop.device_id, body, now)
    assert stored_ids(phone) == {b.id for b in blocks}
    assert state.sent == len(blocks)
    # A link that goes down drops what was still queued (the next session asks again).
    sender.receive(phone.device_id, want, now)
    assert state.outgoing
    sender.peer_down(phone.device_id)
    assert not state.outgoing


def test_put_batches_is_one_transaction(mind) -> None:  # type: ignore[no-untyped-def]
    laptop, phone = mind["laptop"], mind["phone"]
    blocks = [laptop.new_block(body=f"batch note {i}") for i in range(30)]

    def failing() -> Iterator[list[Block]]:
        yield blocks[:10]
        yield blocks[10:20]
        raise StoreError("the producer failed half-way")

    with pytest.raises(StoreError, match="half-way"):
        phone.store.put_batches(failing(), verified=True)
    assert stored_ids(phone) == set()

    forged = Block(**{**{s: getattr(blocks[25], s) for s in Block.__slots__}, "body": "forged"})
    with pytest.raises(IdMismatchError):
        phone.store.put_batches([blocks[:10], [forged]])  # verified=False: the store checks
    assert stored_ids(phone) == set()

    # Duplicates across batches of one transaction are seen (the writer reads its own rows).
    results = phone.store.put_batches([blocks[:20], blocks[15:30]], verified=False)
    assert results[:20] == [PutResult.STORED] * 20
    assert results[20:25] == [PutResult.DUPLICATE] * 5
    assert results[25:] == [PutResult.STORED] * 10
    assert stored_ids(phone) == {b.id for b in blocks}


def test_an_empty_device_asks_for_records_while_it_still_reconciles(mind, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import functools

    from kiana.sync.reconcile import Reconciler

    # The smaller device id initiates: the empty device is the one with the smaller id.
    source, target = sorted((mind["laptop"], mind["phone"]), key=lambda n: n.device_id)[::-1]
    blocks = [source.new_block(body=f"reconciled note {i}") for i in range(300)]
    source.store.put_many(blocks, verified=True)
    # Small frames: 300 ids take several rounds (as 20,000 do with the real 60 KB limit).
    monkeypatch.setattr(engine_mod, "Reconciler", functools.partial(Reconciler, frame_limit=2000))
    empty, full = target.device_id, source.device_id
    engines = {
        empty: engine_for(target, verify_threads=0),
        full: engine_for(source, verify_threads=0),
    }
    now = now_ms()
    queue = [(empty, full, body) for _, body in engines[empty].peer_up(full, now)]
    queue += [(full, empty, body) for _, body in engines[full].peer_up(empty, now)]
    kinds: list[tuple[bytes, bool]] = []  # (kind sent by the empty device, still reconciling)
    for _ in range(10_000):
        if not queue:
            break
        src, dst, body = queue.pop(0)
        now += 10
        out = engines[dst].receive(src, body, now)
        if dst == empty:
            running = engines[empty].peers[full].reconciler is not None
            kinds += [(b[:1], running) for _, b in out]
        queue += [(dst, peer, b) for peer, b in out]
        for dev, eng in engines.items():
            queue += [(dev, peer, b) for peer, b in eng.tick(now)]
    assert not queue
    assert (b"W", True) in kinds, kinds  # asked before the reconciliation was over
    assert sum(k == b"R" for k, _ in kinds) >= 3
    assert stored_ids(target) == {b.id for b in blocks}
    [status] = engines[empty].status()
    assert status["in_sync"] and status["behind"] == 0, status
