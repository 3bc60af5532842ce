"""Memory sync through real MeshServices on loopback: convergence, pushes, catch-up, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.mesh_helpers import init_node, linked, pair_into, start_service, stop_service, until

from kiana.mesh.service import MeshService

pytestmark = pytest.mark.timeout(120)


def block_ids(mesh: MeshService) -> set[str]:
    return {b.id for b in mesh.node.store.iter_blocks()}


async def wait_same(*services: MeshService, timeout_s: float = 30.0) -> None:
    async def same() -> bool:
        sets = [await asyncio.to_thread(block_ids, s) for s in services]
        return all(x == sets[0] for x in sets)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await same():
        if loop.time() > deadline:
            sizes = [len(await asyncio.to_thread(block_ids, s)) for s in services]
            raise AssertionError(f"no convergence: {sizes}")
        await asyncio.sleep(0.05)


async def dump_tasks_after(seconds: float) -> None:
    """A watchdog: if the test is still running, print where every task waits."""
    await asyncio.sleep(seconds)
    for task in asyncio.all_tasks():
        coro: object = task.get_coro()
        where = []
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                where.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        print("TASK", task.get_name(), " <- ".join(where))


def test_three_devices_converge_push_and_catch_up_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        watchdog = asyncio.ensure_future(dump_tasks_after(80))
        sa = init_node(tmp_path / "a")
        a = await start_service(sa)
        sb = await pair_into(a, tmp_path / "b", "b")
        sc = await pair_into(a, tmp_path / "c", "c")
        b = await start_service(sb, seed=2)
        c = await start_service(sc, seed=3)
        for node, n in ((a.node, 50), (b.node, 40), (c.node, 30)):
            node.auto_embed = False
            for i in range(n):
                await asyncio.to_thread(node.remember, f"{node.device_id} fact {i}")
        # a line: c - a - b (c and b never link directly)
        await b.add_address(f"127.0.0.1:{a.port}")
        await c.add_address(f"127.0.0.1:{a.port}")
        await until(lambda: linked(a, b) and linked(a, c))
        await wait_same(a, b, c)
        assert len(block_ids(a)) == 120
        # a new fact on c reaches b through a, pushed without waiting for a resync
        fact = await asyncio.to_thread(c.node.remember, "The boiler service is on 3 June")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await until(lambda: fact.block.id in block_ids(b), 10, "push c -> a -> b")
        assert loop.time() - t0 < 2.0
        # b goes offline, 500 blocks are written on a, b comes back and catches up
        await stop_service(b)
        for i in range(500):
            await asyncio.to_thread(a.node.remember, f"while b was away {i}")
        b = await start_service(sb, seed=4)
        b.node.auto_embed = False
        await b.add_address(f"127.0.0.1:{a.port}")
        await wait_same(a, b)
        status = await a.sync_status()
        peer_b = next(p for p in status["peers"] if p["device"] == b.node.device_id)
        assert peer_b["rejected"] == 0
        # erasure travels everywhere
        await asyncio.to_thread(a.node.forget, fact.block.id)
        await until(lambda: fact.block.id not in block_ids(b) | block_ids(c), 10, "erasure")
        assert b.node.store.tombstone_for(fact.block.id) is not None
        for svc in (c, b, a):
            await stop_service(svc)
        watchdog.cancel()

    asyncio.run(main())
