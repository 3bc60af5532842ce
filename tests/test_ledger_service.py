"""The ledger and the shared state over real MeshServices: commits sealed and spread, pins merged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.api_helpers import ApiClient, error_code
from tests.mesh_helpers import init_node, linked, pair_into, start_service, stop_service, until

from kiana.api.app import create_app
from kiana.ledger import commit_record
from kiana.ledger.audit import verify_stored
from kiana.mesh.service import MeshService

pytestmark = pytest.mark.timeout(120)


def committed(mesh: MeshService, block_id: str) -> bool:
    assert mesh.core is not None
    return mesh.core.ledger.is_committed(commit_record(block_id).id)


def test_facts_are_committed_by_the_authority_and_the_chain_spreads(tmp_path: Path) -> None:
    async def main() -> None:
        a = await start_service(init_node(tmp_path / "a"))
        b = await start_service(await pair_into(a, tmp_path / "b", "b"), seed=2)
        await b.add_address(f"127.0.0.1:{a.port}")
        await until(lambda: linked(a, b))
        a.node.auto_embed = b.node.auto_embed = False
        # b is a member: its fact's commit record goes to a, the authority, which seals it.
        fact = await asyncio.to_thread(b.node.remember, "The boiler service is on 3 June")
        await until(lambda: committed(a, fact.block.id), 30, "sealed by the authority")
        await until(lambda: committed(b, fact.block.id), 10, "chain reached b")
        assert a.core is not None and b.core is not None
        assert a.core.ledger.head.hash == b.core.ledger.head.hash
        for svc in (a, b):
            result = await asyncio.to_thread(verify_stored, svc.node.store.db, svc.node.genesis)
            assert result.ok and result.height >= 1, result
        # pins: concurrent pin on a and unpin on b (which had not seen the pin) -> pinned
        await a.pin(fact.block.id, True)
        await until(lambda: fact.block.id in b.core.state.members("pins"), 10, "pin spread")
        assert await b.pins() == [fact.block.id]
        summary = await b.ledger_summary()
        assert summary["head"] == a.core.ledger.head.hash
        assert summary["authorities"] == [a.node.device_id]
        for svc in (b, a):
            await stop_service(svc)

    asyncio.run(main())


def test_pin_and_ledger_head_routes(tmp_path: Path) -> None:
    from tests.api_helpers import make_home

    settings = make_home(tmp_path)
    with ApiClient(create_app(settings), settings) as api:
        block = api.post("/api/v1/blocks", json={"text": "pin me"}).json()["block"]
        pinned = api.put(f"/api/v1/pins/{block['id']}")
        assert pinned.status_code == 200 and pinned.json()["pins"] == [block["id"]]
        assert api.get("/api/v1/pins").json()["pins"] == [block["id"]]
        unpinned = api.delete(f"/api/v1/pins/{block['id']}")
        assert unpinned.status_code == 200 and unpinned.json()["pins"] == []
        missing = api.put(f"/api/v1/pins/{'0' * 64}")
        assert missing.status_code == 404 and error_code(missing) == "not_found"
        assert api.put("/api/v1/pins/xyz").status_code == 422
        head = api.get("/api/v1/ledger/head")
        assert head.status_code == 200 and head.json()["height"] == 0
        assert head.json()["authorities"] == [api.get("/api/v1/devices").json()["this_device"]]
