"""Shared state routes: pins (and the ledger's head), merged across devices by the CRDT."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from kiana.api.deps import Rt
from kiana.api.routes_mesh import _mesh
from kiana.api.schemas_mesh import LedgerHeadOut, PinsOut

router = APIRouter(tags=["shared state"])

BlockId = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]


@router.get("/pins", summary="Blocks pinned by anyone in the mind", response_model=PinsOut)
async def pins(rt: Rt) -> dict[str, Any]:
    return {"pins": await _mesh(rt).pins()}


@router.put("/pins/{block_id}", summary="Pin a block on every device", response_model=PinsOut)
async def pin(rt: Rt, block_id: BlockId) -> dict[str, Any]:
    await rt.off.read(rt.node.store.get, block_id)  # 404 / 410 for unknown or erased blocks
    return {"pins": await _mesh(rt).pin(block_id, True)}


@router.delete("/pins/{block_id}", summary="Unpin a block", response_model=PinsOut)
async def unpin(rt: Rt, block_id: BlockId) -> dict[str, Any]:
    return {"pins": await _mesh(rt).pin(block_id, False)}


@router.get(
    "/ledger/head",
    summary="The live ledger: head, height, pending records, current authorities",
    response_model=LedgerHeadOut,
)
async def ledger_head(rt: Rt) -> dict[str, Any]:
    return await _mesh(rt).ledger_summary()
