"""The node's change feed: notices from any thread wake asyncio watchers at once, batched;
a block that arrives by sync, a link coming up and sync progress are announced too."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from tests.mesh_helpers import init_node, linked, pair_into, start_service, stop_service, until

from kiana.changes import Change, ChangeFeed, ChangeWatch, Topic

pytestmark = pytest.mark.timeout(60)


def test_listeners_get_every_notice_until_they_unsubscribe() -> None:
    feed = ChangeFeed()
    seen: list[Change] = []
    off = feed.subscribe(seen.append)
    feed.publish(Topic.BLOCKS, local=True)
    feed.publish(Topic.PEERS)
    assert seen == [Change(Topic.BLOCKS, local=True), Change(Topic.PEERS, local=False)]
    assert feed.listeners == 1
    off()
    off()  # twice is harmless
    feed.publish(Topic.SYNC)
    assert len(seen) == 2 and feed.listeners == 0


def test_a_watch_wakes_at_once_from_another_thread_and_batches() -> None:
    async def main() -> None:
        feed = ChangeFeed()
        with ChangeWatch(feed) as watch:
            loop = asyncio.get_running_loop()
            assert await watch.wait(0.05) == set()  # nothing announced: the timeout
            timer = threading.Timer(0.05, feed.publish, args=(Topic.BLOCKS,))
            started = loop.time()
            timer.start()
            assert await watch.wait(10) == {Topic.BLOCKS}
            assert loop.time() - started < 2.0  # woken, not timed out
            for _ in range(1000):  # a burst from a busy thread: one batch, one wake-up
                await asyncio.to_thread(feed.publish, Topic.SYNC)
            feed.publish(Topic.PEERS)
            assert await watch.wait(10) == {Topic.SYNC, Topic.PEERS}
            assert await watch.wait(0.05) == set()
        assert feed.listeners == 0  # closed with the block

    asyncio.run(main())


def test_a_watch_keeps_only_its_topics_and_local_writes() -> None:
    async def main() -> None:
        feed = ChangeFeed()
        with ChangeWatch(feed, (Topic.BLOCKS,), local_only=True) as watch:
            feed.publish(Topic.BLOCKS)  # received by sync: not local
            feed.publish(Topic.PEERS, local=True)
            assert await watch.wait(0.05) == set()
            feed.publish(Topic.BLOCKS, local=True)
            assert await watch.wait(1) == {Topic.BLOCKS}

    asyncio.run(main())


def test_a_notice_after_the_loop_closed_is_dropped() -> None:
    feed = ChangeFeed()

    async def make() -> ChangeWatch:
        return ChangeWatch(feed)

    watch = asyncio.run(make())  # its loop is gone now
    feed.publish(Topic.BLOCKS)  # must not raise in the writer
    watch.close()


def test_the_node_announces_its_writes(tmp_path: Path) -> None:
    from kiana.node import Node

    settings = init_node(tmp_path / "a")
    with Node.open(settings) as node:
        node.auto_embed = False
        seen: list[Change] = []
        node.changes.subscribe(seen.append)
        fact = node.remember("The boiler service is on 3 June")
        node.remember("The boiler service is on 3 June")  # a duplicate stores nothing
        assert seen == [Change(Topic.BLOCKS, local=True)]
        node.forget(fact.block.id)
        assert len(seen) == 2


def test_blocks_from_a_peer_links_and_sync_progress_are_announced(tmp_path: Path) -> None:
    async def main() -> None:
        sa = init_node(tmp_path / "a")
        a = await start_service(sa)
        sb = await pair_into(a, tmp_path / "b", "b")
        b = await start_service(sb, seed=2)
        try:
            a.node.auto_embed = b.node.auto_embed = False
            arrived: list[float] = []

            def on_b(change: Change) -> None:  # on b's store thread: note the time only
                if change.topic is Topic.BLOCKS and not change.local:
                    arrived.append(time.monotonic())

            b.node.changes.subscribe(on_b)
            with ChangeWatch(b.node.changes, (Topic.PEERS, Topic.SYNC)) as watch:
                await b.add_address(f"127.0.0.1:{a.port}")
                await until(lambda: linked(a, b))
                seen: set[Topic] = set()
                deadline = time.monotonic() + 10
                while seen != {Topic.PEERS, Topic.SYNC} and time.monotonic() < deadline:
                    seen |= await watch.wait(1)
                assert seen == {Topic.PEERS, Topic.SYNC}
            await asyncio.sleep(0.5)  # the first reconciliation is done
            arrived.clear()
            started = time.monotonic()
            fact = await asyncio.to_thread(a.node.remember, "A fact written on a")
            await until(lambda: bool(arrived), 10, "b announces the block it received")
            # Pushed when written (no sync tick to wait for), announced when stored.
            assert arrived[0] - started < 1.0, arrived[0] - started
            assert await asyncio.to_thread(b.node.store.has, fact.block.id)
        finally:
            await stop_service(b)
            await stop_service(a)

    asyncio.run(main())
