"""The dashboard's live events (``GET /api/v1/events``): pushed, with a slow poll behind.

The stream sends ``blocks``, ``peers`` and ``sync`` events, each only when its
data changed: first a snapshot of all three, then changes. It wakes as soon as
the node's ``ChangeFeed`` announces one (a block stored here or by sync, a link
up or down, sync progress) and reads only what was announced. Writes by
another process on the same home (``kiana remember`` in a shell) announce
nothing here, so every ``FALLBACK_S`` it also checks the store's cheap change
marker (the newest block and the tombstone count) and refreshes the peer and
sync counters. ``MIN_GAP_S`` bounds how often it reads while sync is busy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kiana.changes import ChangeWatch, Topic

if TYPE_CHECKING:
    from kiana.api.deps import Runtime
    from kiana.store.db import Conn

FALLBACK_S = 1.0
MIN_GAP_S = 0.05


def _marker(c: Conn) -> tuple[int, int]:
    """Changes when a block is stored or erased, by any process: cheap (an index lookup)."""
    newest = c.one("SELECT MAX(seq) FROM blocks")
    tombs = c.one("SELECT COUNT(*) FROM tombstones")
    return (int(newest[0] or 0) if newest else 0, int(tombs[0]) if tombs else 0)


def _blocks(c: Conn) -> tuple[tuple[int, int], dict[str, Any]]:
    marker = _marker(c)  # first: a block stored meanwhile is seen again at the next poll
    rows = c.all("SELECT id FROM blocks WHERE erased = 0 ORDER BY seq DESC LIMIT 5")
    total = c.one("SELECT COUNT(*) FROM blocks WHERE erased = 0")
    return marker, {"total": int(total[0]) if total else 0, "latest": [str(r[0]) for r in rows]}


async def event_stream(
    rt: Runtime, disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """Server-sent events until the client goes away."""
    last: dict[str, str] = {}
    marker: tuple[int, int] | None = None
    db = rt.node.store.db
    yield b": connected\n\n"
    with ChangeWatch(rt.node.changes) as watch:
        topics = set(Topic)
        while not await disconnected():
            if not topics:  # nothing announced: poll what no notice covers
                topics = {Topic.PEERS, Topic.SYNC}
                if await rt.off.read(db.read, _marker) != marker:
                    topics.add(Topic.BLOCKS)
            data: dict[str, Any] = {}
            if Topic.BLOCKS in topics:
                marker, data["blocks"] = await rt.off.read(db.read, _blocks)
            mesh = rt.mesh
            if mesh is not None and mesh.core is not None:
                if Topic.PEERS in topics:
                    data["peers"] = {"peers": mesh.peer_status()}
                if Topic.SYNC in topics:
                    data["sync"] = await mesh.sync_status()
            for name, value in data.items():
                text = json.dumps(value, sort_keys=True)
                if last.get(name) != text:
                    last[name] = text
                    yield f"event: {name}\ndata: {text}\n\n".encode()
            await asyncio.sleep(MIN_GAP_S)  # whatever arrives meanwhile comes in one batch
            topics = await watch.wait(FALLBACK_S)
