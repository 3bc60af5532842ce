"""Core messages are queued and handled block sync first (``kiana.sync.core_queue``), each
channel in order; a gone peer's queued messages come before its ``peer_down``; stopping a
service ends the sync engine's verify thread. Real services, stores and keys."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.mesh_helpers import start_service, stop_service, until
from tests.mind_helpers import make_mind

from kiana.mesh.service import now_ms
from kiana.node import Node
from kiana.sync.core_queue import SYNC_RUN, CoreQueue

pytestmark = pytest.mark.timeout(60)


def test_the_queue_puts_sync_first_keeps_each_channel_in_order_and_starves_nobody() -> None:
    q = CoreQueue(max_bytes=100)
    for i in range(3):
        q.push("p", "ledger", b"L%d" % i, f"l{i}")
    q.push("p", "state", b"S0", "s0")
    for i in range(SYNC_RUN + 3):
        q.push("q", "sync", b"Y%d" % i, f"y{i}")
    q.push("p", "ledger", b"L3", "l3")
    assert len(q) == 3 + 1 + SYNC_RUN + 3 + 1
    assert q.pending("p") == 5 and q.pending("q") == SYNC_RUN + 3
    order = []
    while (item := q.pop()) is not None:
        order.append(item.msg_id)
        q.done(item)
    sync_ids = [f"y{i}" for i in range(SYNC_RUN + 3)]
    # SYNC_RUN sync messages, then the oldest waiting message of another channel, and so on;
    # the other channels in arrival order; each channel in its own order.
    assert order == [
        *sync_ids[:SYNC_RUN],
        "l0",
        *sync_ids[SYNC_RUN:],
        "l1",
        "l2",
        "s0",
        "l3",
    ]
    assert q.pending("p") == 0 and q.queued_bytes == 0 and not q.full
    q.push("p", "sync", b"x" * 100, "big")
    assert q.full


@pytest.fixture
def homes(tmp_path: Path) -> dict[str, Any]:
    return make_mind(tmp_path, ["laptop", "phone"])


def _hold(gate: threading.Event, started: threading.Event) -> None:
    started.set()
    gate.wait(10)


def test_sync_messages_overtake_queued_ledger_messages_and_peer_down_waits(homes) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        mesh = await start_service(homes["laptop"])
        phone = await asyncio.to_thread(lambda: _device_id(homes["phone"]))
        try:
            assert mesh.core is not None
            handled: list[tuple[str, bytes]] = []
            real = mesh.core.handle

            def handle(peer: str, channel: str, body: bytes, now: int) -> Any:
                handled.append((channel, body))
                return real(peer, channel, body, now)

            mesh.core.handle = handle  # type: ignore[method-assign]
            await mesh._run(mesh.core.peer_up, phone, now_ms())
            # The store thread is busy (as with a long ledger message): what arrives queues.
            gate, started = threading.Event(), threading.Event()
            blocked = asyncio.ensure_future(mesh._run(_hold, gate, started))
            await asyncio.to_thread(started.wait, 5)
            heads = [b'{"t":"head","hash":"%d"}' % i for i in range(3)]
            for i, body in enumerate(heads):
                await mesh._deliver(phone, "ledger", body, f"l{i}")
            await mesh._deliver(phone, "state", b"not an op", "s0")
            missing = bytes(range(32))
            done = b"D\x01" + missing  # "these ids are coming": phone is now awaited for them
            await mesh._deliver(phone, "sync", done, "y0")
            await mesh._deliver(phone, "sync", b"W", "y1")
            # The reader did not wait for any of it to be handled.
            assert not handled and len(mesh._core_queue) == 6
            down = asyncio.ensure_future(mesh._core_peer_down(phone))
            await asyncio.sleep(0.05)
            assert not down.done()  # its messages first
            gate.set()
            await blocked
            await asyncio.wait_for(down, 10)
            assert [c for c, _ in handled] == [
                "sync",
                "sync",
                "ledger",
                "ledger",
                "ledger",
                "state",
            ]
            assert [b for c, b in handled if c == "ledger"] == heads
            state = mesh.sync.peers[phone]
            # D was handled before peer_down, which cleared what it made us await.
            assert not state.up and not state.wanted
            assert mesh._core_queue.pending(phone) == 0
        finally:
            await stop_service(mesh)

    asyncio.run(main())


def _device_id(settings: Any) -> str:
    with Node.open(settings) as node:
        return node.device_id


def _verify_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kiana-sync-verify")]


def test_a_bulk_sync_over_the_mesh_then_stop_leaves_no_verify_thread(homes) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        assert not _verify_threads()

        def fill() -> set[str]:
            with Node.open(homes["laptop"]) as node:
                node.auto_embed = False
                blocks = [node.new_block(body=f"note {i} for the verify pool") for i in range(300)]
                node.store.put_many(blocks, verified=True)
                return {b.id for b in blocks}

        ids = await asyncio.to_thread(fill)
        a = await start_service(homes["laptop"], seed=1)
        b = await start_service(homes["phone"], seed=2)
        try:
            a.node.auto_embed = b.node.auto_embed = False
            await a.connect("127.0.0.1", b.port, expect=b.node.device_id)

            def have() -> bool:
                return ids <= {x.id for x in b.node.store.iter_blocks()}

            await until(have, 30, "the 300 blocks on the phone")
            # One records message of 300 lines: its signatures went to the worker thread.
            assert b.sync.verify_pool is not None and _verify_threads()
        finally:
            await stop_service(b)
            await stop_service(a)
        assert not _verify_threads()
        assert b.sync.verify_pool is None

    asyncio.run(main())
