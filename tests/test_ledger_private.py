"""Private memory in the shared ledger and sync: the ids of a person's private blocks and
their erasures never reach another person's device (real stores, real keys, NodeCores
linked through an in-memory pump that keeps every byte sent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.mind_helpers import make_mind

from kiana.blocks import make_tombstone
from kiana.ledger import (
    Params,
    SqlLedgerStore,
    commit_record,
    private_commit_token,
    private_erase_token,
    private_record,
)
from kiana.node import Node, now_ms
from kiana.sync.core import NodeCore
from kiana.sync.items import Cursor, scan

PARAMS = Params(period_ms=1_000)


class Mind:
    """NodeCores by name; ``pump`` runs ticks and delivers messages until quiet."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.now = now_ms()
        self.cores: dict[str, NodeCore] = {}
        self.inbox: dict[str, list[bytes]] = {n: [] for n in nodes}  # every body received
        self.by_id = {node.device_id: name for name, node in nodes.items()}
        for name, node in nodes.items():
            node.auto_embed = False
            me = node.store.device(node.device_id)
            assert me is not None

            def same(peer: str, node: Node = node, person: str = me.person) -> bool:
                other = node.store.device(peer)
                return other is not None and other.person == person

            self.cores[name] = NodeCore(
                node.store,
                node.keys,
                node.genesis,
                my_person=me.person,
                same_person=same,
                ledger_store=SqlLedgerStore(node.store.db),
                params=PARAMS,
            )
        self.queue: list[tuple[str, str, str, bytes]] = []

    def link(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            self._send(x, self.cores[x].peer_up(self.nodes[y].device_id, self.now))

    def _send(self, src: str, out: list[tuple[str, str, bytes]]) -> None:
        self.queue += [(src, self.by_id[peer], channel, body) for peer, channel, body in out]

    def pump(self, ms: int) -> None:
        end = self.now + ms
        while self.now < end:
            self.now += 250
            for name, core in self.cores.items():
                self._send(name, core.tick(self.now))
            while self.queue:
                src, dst, channel, body = self.queue.pop(0)
                self.inbox[dst].append(body)
                out = self.cores[dst].handle(self.nodes[src].device_id, channel, body, self.now)
                self._send(dst, out)


@pytest.fixture
def mind(tmp_path: Path) -> Iterator[dict[str, Node]]:
    homes = make_mind(tmp_path, ["laptop", "phone", "guest"], new_person={"guest": "Guest"})
    nodes = {name: Node.open(s) for name, s in homes.items()}
    yield nodes
    for node in nodes.values():
        node.close()


def _ledger_text(mind: Mind, name: str) -> str:
    ledger = mind.cores[name].ledger
    return "".join(str(b.to_dict()) for b in ledger.chain()) + str(
        [r.to_dict() for r in ledger.pending]
    )


def test_a_forgotten_private_block_never_reaches_another_person(mind: dict[str, Node]) -> None:
    laptop, phone, guest = mind["laptop"], mind["phone"], mind["guest"]
    secret = laptop.remember("my bank PIN hint is the cat", scope="private").block
    shared = laptop.remember("the wifi is called Home").block
    net = Mind(mind)
    net.link("laptop", "phone")
    net.link("laptop", "guest")
    net.link("phone", "guest")
    net.pump(15_000)
    assert phone.store.has(secret.id) and not guest.store.has(secret.id)
    tomb = phone.forget(secret.id)  # P's other device forgets it
    net.pump(20_000)

    # P's devices: erased everywhere, the erasure and the commit sealed as tokens.
    assert laptop.store.tombstone_for(secret.id) is not None
    commit_token = private_record(private_commit_token(secret.id, secret.sig))
    erase_token = private_record(private_erase_token(tomb.id, tomb.sig))
    for name in ("laptop", "phone", "guest"):
        ledger = net.cores[name].ledger
        assert ledger.is_committed(commit_token.id), name
        assert ledger.is_committed(erase_token.id), name
        assert ledger.is_committed(commit_record(shared.id).id), name
    assert shared.id in {b.id for b in guest.store.iter_blocks()}

    # Q's device: not one byte it received, nothing it stored, names the id.
    needles = (secret.id, tomb.id)
    raw = (bytes.fromhex(secret.id), bytes.fromhex(tomb.id))
    received = net.inbox["guest"]
    assert received and any(b"ledger" in b or b"records" in b for b in received)
    for body in received:
        for needle in needles:
            assert needle.encode() not in body
        for needle_raw in raw:
            assert needle_raw not in body
    assert guest.store.tombstone_for(secret.id) is None
    for needle in needles:
        assert needle not in _ledger_text(net, "guest")
        assert needle not in _ledger_text(net, "laptop")  # the shared ledger is the same
    files = [f for f in Path(guest.settings.home).rglob("*") if f.is_file()]
    assert any(f.suffix == ".db" or "sqlite" in f.name for f in files), files
    for f in files:  # database, WAL, logs: every byte the guest's device keeps
        data = f.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f


def test_a_tombstone_for_a_block_never_held_is_private(mind: dict[str, Node]) -> None:
    """A device that never held the erased block cannot know its scope: same person only."""
    laptop, phone = mind["laptop"], mind["phone"]
    block = laptop.remember("a private note", scope="private").block
    tomb = make_tombstone(laptop.keys.signing, laptop.device_id, erases=block.id, created=now_ms())
    phone.store.erase(tomb)  # the tombstone arrived, the block never did
    items, _ = scan(phone.store, Cursor())
    [item] = [i for i in items if i.id == tomb.id]
    assert item.tombstone and item.private
    # where the block is held its own scope decides: a shared block's tombstone is shared
    fact = laptop.remember("a shared fact").block
    shared_tomb = laptop.forget(fact.id)
    items, _ = scan(laptop.store, Cursor())
    assert [i.private for i in items if i.id == shared_tomb.id] == [False]


def test_an_authority_seals_only_commits_it_can_check(mind: dict[str, Node]) -> None:
    from kiana.ledger import Ledger
    from kiana.ledger.commits import check_commits

    laptop = mind["laptop"]  # the authority
    net = Mind({"laptop": laptop})
    nobody = commit_record("ab" * 32)  # an id no device has
    net.cores["laptop"].ledger.add_records([nobody])
    fact = laptop.remember("the boiler service is on 3 June").block
    net.pump(5_000)
    ledger = net.cores["laptop"].ledger
    assert ledger.is_committed(commit_record(fact.id).id)
    assert not ledger.is_committed(nobody.id) and nobody in ledger.pending  # waits

    # A chain sealed without that rule (older versions, another implementation) is valid:
    # it is received like any other; the audit reports what this device can check.
    other = Ledger(laptop.genesis)
    secret = laptop.remember("a private note", scope="private").block
    start = laptop.genesis.created
    other.add_records([nobody, commit_record(fact.id), commit_record(secret.id)])
    assert other.propose(laptop.keys, start + 5_000) is not None
    report = check_commits(laptop.store.db, laptop.genesis.device, list(other.chain())[1:])
    codes = {(f.level, f.code) for f in report.findings}
    assert codes == {("warning", "commit_absent"), ("error", "private_id_in_ledger")}
    assert report.checked == 3
