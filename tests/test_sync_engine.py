"""SyncEngine between real stores of one mind, through an in-memory pump (no sockets)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tests.mind_helpers import make_mind

from kiana.blocks import make_block
from kiana.identity.keys import DeviceKeys
from kiana.node import Node, now_ms
from kiana.sync.engine import SyncEngine
from kiana.sync.policy import admission


def engine_for(node: Node) -> SyncEngine:
    from kiana.sync.policy import may_erase

    me = node.store.device(node.device_id)
    assert me is not None
    return SyncEngine(
        node.store,
        me=node.device_id,
        same_person=Net._same_person(node),
        admit=admission(node.store, me.person),
        may_erase=may_erase(node.store),
    )


class Net:
    """Engines by device id; ``pump`` delivers messages (optionally lossy) until quiet."""

    def __init__(self, nodes: dict[str, Node], *, seed: int = 1) -> None:
        self.nodes = nodes
        self.rng = random.Random(seed)
        self.engines: dict[str, SyncEngine] = {}
        self.now = now_ms()
        for node in nodes.values():
            node.auto_embed = False
            person = node.store.device(node.device_id)
            assert person is not None
            self.engines[node.device_id] = engine_for(node)
        self.queue: list[tuple[str, str, bytes]] = []
        self.bytes = 0

    @staticmethod
    def _same_person(node: Node):  # type: ignore[no-untyped-def]
        def same(peer: str) -> bool:
            me, other = node.store.device(node.device_id), node.store.device(peer)
            return me is not None and other is not None and me.person == other.person

        return same

    def link(self, a: Node, b: Node) -> None:
        for x, y in ((a, b), (b, a)):
            self._send(x.device_id, self.engines[x.device_id].peer_up(y.device_id, self.now))

    def _send(self, src: str, out: list[tuple[str, bytes]]) -> None:
        for dst, body in out:
            self.queue.append((src, dst, body))

    def pump(self, steps: int = 10_000) -> None:
        for _ in range(steps):
            self.now += 10
            for src, engine in self.engines.items():
                self._send(src, engine.tick(self.now))
            if not self.queue:
                return
            src, dst, body = self.queue.pop(0)
            self.bytes += len(body)
            self._send(dst, self.engines[dst].receive(src, body, self.now))
        raise AssertionError("sync never went quiet")


def ids(node: Node) -> set[str]:
    return {b.id for b in node.store.iter_blocks()}


@pytest.fixture
def mind(tmp_path: Path):  # type: ignore[no-untyped-def]
    homes = make_mind(tmp_path, ["laptop", "phone", "guest"], new_person={"guest": "Guest"})
    nodes = {name: Node.open(s) for name, s in homes.items()}
    yield nodes
    for node in nodes.values():
        node.close()


def test_two_devices_converge_and_new_blocks_are_pushed(mind) -> None:  # type: ignore[no-untyped-def]
    laptop, phone = mind["laptop"], mind["phone"]
    for i in range(300):
        laptop.remember(f"laptop fact {i}")
    for i in range(200):
        phone.remember(f"phone fact {i}")
    net = Net({"laptop": laptop, "phone": phone})
    net.link(laptop, phone)
    net.pump()
    assert ids(laptop) == ids(phone) and len(ids(laptop)) == 500
    status = {s["device"]: s for s in net.engines[laptop.device_id].status()}
    assert status[phone.device_id]["in_sync"] and status[phone.device_id]["behind"] == 0, status
    # A block written later (by any process) is pushed at the next tick.
    block = phone.remember("the boiler service is on 3 June").block
    net.pump()
    assert laptop.store.get(block.id).body == "the boiler service is on 3 June"


def test_private_blocks_stay_with_their_person(mind) -> None:  # type: ignore[no-untyped-def]
    laptop, phone, guest = mind["laptop"], mind["phone"], mind["guest"]
    secret = laptop.remember("my bank PIN hint", scope="private").block
    shared = laptop.remember("the wifi is called Home").block
    net = Net(mind)
    net.link(laptop, guest)
    net.link(laptop, phone)
    net.pump()
    assert secret.id in ids(phone)  # same person
    assert secret.id not in ids(guest) and shared.id in ids(guest)
    # The guest asking for it by id gets nothing.
    net.queue.append((guest.device_id, laptop.device_id, b"W" + bytes.fromhex(secret.id)))
    net.pump()
    assert secret.id not in ids(guest)


def test_erasure_travels_and_beats_lagging_content(mind) -> None:  # type: ignore[no-untyped-def]
    laptop, phone, guest = mind["laptop"], mind["phone"], mind["guest"]
    block = laptop.remember("to be forgotten").block
    net = Net(mind)
    net.link(laptop, phone)
    net.link(laptop, guest)
    net.pump()
    assert block.id in ids(guest)
    laptop.forget(block.id)
    net.pump()
    for node in (phone, guest):
        assert block.id not in ids(node)
        assert node.store.tombstone_for(block.id) is not None
    # A lagging peer pushing the old content is refused.
    record = (
        b'{"type":"block","record":' + __import__("json").dumps(block.to_dict()).encode() + b"}"
    )
    net.queue.append((phone.device_id, guest.device_id, b"B" + record))
    net.pump()
    assert block.id not in ids(guest)


def test_forged_and_foreign_blocks_are_rejected_and_counted(mind) -> None:  # type: ignore[no-untyped-def]
    laptop, phone = mind["laptop"], mind["phone"]
    net = Net({"laptop": laptop, "phone": phone})
    net.link(laptop, phone)
    net.pump()
    stranger = DeviceKeys.generate()
    foreign = make_block(stranger.signing, stranger.device_id, kind="fact", body="x", created=1)
    good = laptop.new_block(body="genuine")
    forged = good.to_dict() | {"body": "tampered"}
    import json

    lines = [
        json.dumps({"type": "block", "record": foreign.to_dict()}),
        json.dumps({"type": "block", "record": forged}),
        "not json",
        json.dumps({"type": "block", "record": good.to_dict()}),
    ]
    net.queue.append((laptop.device_id, phone.device_id, b"B" + "\n".join(lines).encode()))
    net.pump()
    assert good.id in ids(phone)
    assert foreign.id not in ids(phone)
    status = {s["device"]: s for s in net.engines[phone.device_id].status()}
    assert status[laptop.device_id]["rejected"] == 3
    reasons = [r for _, _, r in net.engines[phone.device_id].rejections]
    assert "unknown_author" in str(reasons) or "unknown" in str(reasons)


def test_both_sides_know_when_they_are_in_sync(mind) -> None:  # type: ignore[no-untyped-def]
    laptop, phone = mind["laptop"], mind["phone"]
    for i in range(40):
        laptop.remember(f"laptop fact {i}")
        phone.remember(f"phone fact {i}")
    net = Net({"laptop": laptop, "phone": phone})
    net.link(laptop, phone)
    net.pump()
    for a, b in ((laptop, phone), (phone, laptop)):
        [status] = net.engines[a.device_id].status()
        assert status["device"] == b.device_id
        assert status["in_sync"] and status["behind"] == 0 and status["received"] == 40, status


def test_a_forged_erasure_that_came_before_its_block_is_dropped(mind) -> None:  # type: ignore[no-untyped-def]
    """A member of another person erases a block the receiver has not seen yet: the
    tombstone is kept at first (the block might never come), and dropped when the block
    arrives and shows that eraser was not allowed to erase it."""
    from kiana.blocks import make_tombstone

    laptop, phone, guest = mind["laptop"], mind["phone"], mind["guest"]
    block = laptop.remember("laptop's own fact").block
    bogus = make_tombstone(
        guest.keys.signing, guest.device_id, erases=block.id, created=now_ms(), reason="x"
    )
    net = Net(mind)
    line = json.dumps({"type": "tombstone", "record": bogus.to_dict()}).encode()
    net.queue.append((guest.device_id, phone.device_id, b"B" + line))
    net.pump()
    assert phone.store.tombstone_for(block.id) is not None  # unknown block: kept for now
    net.link(laptop, phone)
    net.pump()
    assert phone.store.get(block.id).body == "laptop's own fact"
    assert phone.store.tombstone_for(block.id) is None
    assert laptop.store.get(block.id).body == "laptop's own fact"
    # An allowed erasure (by the author) still wins, before or after the block.
    real = laptop.forget(block.id)
    net.pump()
    assert phone.store.tombstone_for(block.id) == real


def test_a_block_signed_by_a_revoked_key_is_refused(mind) -> None:  # type: ignore[no-untyped-def]
    from kiana.mesh.enroll import revoke_device

    laptop, phone = mind["laptop"], mind["phone"]
    revoke_device(laptop, phone.device_id)
    stolen = phone.new_block(body="written with a lost phone's key")
    net = Net({"laptop": laptop, "phone": phone})
    line = json.dumps({"type": "block", "record": stolen.to_dict()}).encode()
    net.queue.append((phone.device_id, laptop.device_id, b"B" + line))
    net.pump()
    assert stolen.id not in ids(laptop)
    [(_, record_id, reason)] = net.engines[laptop.device_id].rejections
    assert record_id == stolen.id and reason == "author_revoked"


def test_status_says_comparing_while_a_reconciliation_runs(mind) -> None:  # type: ignore[no-untyped-def]
    """While the rounds run, "behind" is only what they found so far: the status says so."""
    laptop, phone = mind["laptop"], mind["phone"]
    for i in range(2000):
        laptop.remember(f"laptop fact {i}")
    net = Net({"laptop": laptop, "phone": phone})
    net.link(laptop, phone)
    comparing = 0
    for _ in range(100_000):  # Net.pump, one message at a time, looking at the status
        for engine in net.engines.values():
            for status in engine.status():
                if status["comparing"]:
                    comparing += 1
                    assert not status["in_sync"], status
        net.now += 10
        for src, engine in net.engines.items():
            net._send(src, engine.tick(net.now))
        if not net.queue:
            break
        src, dst, body = net.queue.pop(0)
        net._send(dst, net.engines[dst].receive(src, body, net.now))
    assert comparing > 0
    assert ids(phone) == ids(laptop)
    for engine in net.engines.values():
        [final] = engine.status()
        assert final["in_sync"] and not final["comparing"] and final["behind"] == 0, final
