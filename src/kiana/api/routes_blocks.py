"""Knowledge blocks: remember, put signed, list, get, verify, forget, search.

Every core call runs through the offloader: writes on the single writer
thread, reads on the reader pool.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from kiana.api.deps import Rt
from kiana.api.errors import ErasedBlockError, InvalidJsonError
from kiana.api.schemas import (
    ID_PREFIX,
    BlockOut,
    BlockPage,
    ErrorOut,
    Kind,
    ProvenanceOut,
    PutSignedOut,
    RememberIn,
    RememberOut,
    Scope,
    SearchOut,
    TombstoneRecord,
)
from kiana.blocks.codec import DEVICE_ID, MAX_REASON, MAX_TAG_LEN
from kiana.blocks.model import Block
from kiana.errors import ErasedError
from kiana.node import Node, Provenance
from kiana.store import BlockFilter
from kiana.store.rows import MAX_PAGE

MAX_INT = 2**53 - 1
MAX_SEARCH = 100
MAX_QUERY = 1000

router = APIRouter(tags=["blocks"])

BlockId = Annotated[
    str, Path(pattern=ID_PREFIX, description="Block id or a unique prefix of at least 6 hex chars.")
]
KindQ = Annotated[Kind | None, Query(description="Only blocks of this kind.")]
ScopeQ = Annotated[Scope | None, Query(description="Only blocks in this scope.")]
TagQ = Annotated[str | None, Query(min_length=1, max_length=MAX_TAG_LEN, description="Has tag.")]
_ERR = {"model": ErrorOut}
_LOOKUP_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {**_ERR, "description": "No such block"},
    410: {**_ERR, "description": "Erased; the error names the tombstone"},
}


# -- writing ----------------------------------------------------------------------------


@router.post(
    "/blocks",
    summary="Remember a text as a new signed block",
    status_code=201,
    response_model=RememberOut,
    response_model_exclude_unset=True,
    responses={200: {"model": RememberOut, "description": "An identical block already existed"}},
)
async def remember(body: RememberIn, response: Response, rt: Rt) -> dict[str, Any]:
    done = await rt.off.write(
        rt.node.remember,
        body.text,
        kind=body.kind,
        scope=body.scope,
        tags=body.tags,
        title=body.title,
        lang=body.lang,
        supersedes=body.supersedes,
    )
    response.status_code = 201 if done.created else 200
    return {"created": done.created, "block": done.block.to_dict()}


@router.post(
    "/blocks/signed",
    summary="Store a block signed by a member device",
    description="The body is a full signed record, exactly as `Block.to_dict()` produces it. "
    "It is parsed, its id and signature verified, and only then stored.",
    status_code=201,
    response_model=PutSignedOut,
    response_model_exclude_unset=True,
    responses={
        200: {"model": PutSignedOut, "description": "Already stored (duplicate)"},
        410: {**_ERR, "description": "The block was erased; it is refused"},
        422: {**_ERR, "description": "Malformed, forged or from an unknown device"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BlockRecord"}}
            },
        }
    },
)
async def put_signed(request: Request, response: Response, rt: Rt) -> dict[str, Any]:
    raw = await request.body()
    block, result = await rt.off.write(_put_signed, rt.node, raw)
    if result == "erased":
        tomb = await rt.off.read(rt.node.store.tombstone_for, block.id)
        raise ErasedBlockError(
            f"block {block.id[:12]}… was erased; its content is refused",
            tomb.to_dict() if tomb else None,
        )
    response.status_code = 201 if result == "stored" else 200
    return {"result": result, "block": block.to_dict()}


def _put_signed(node: Node, raw: bytes) -> tuple[Block, str]:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidJsonError("the body is not valid JSON") from exc
    return node.put_signed(record)


@router.delete(
    "/blocks/{block_id}",
    summary="Forget a block: erase its content, keep a signed tombstone",
    response_model=TombstoneRecord,
    response_model_exclude_unset=True,
    responses={404: _LOOKUP_ERRORS[404]},
)
async def forget(
    block_id: BlockId,
    rt: Rt,
    reason: Annotated[str, Query(max_length=MAX_REASON, description="Why (kept, signed).")] = "",
) -> dict[str, Any]:
    tomb = await rt.off.write(rt.node.forget, block_id, reason=reason.strip())
    return tomb.to_dict()


# -- reading ----------------------------------------------------------------------------


@router.get(
    "/blocks",
    summary="List blocks, newest first, one page at a time",
    response_model=BlockPage,
    response_model_exclude_unset=True,
)
async def list_blocks(
    rt: Rt,
    kind: KindQ = None,
    scope: ScopeQ = None,
    tag: TagQ = None,
    author: Annotated[str | None, Query(pattern=DEVICE_ID.pattern)] = None,
    since: Annotated[int | None, Query(ge=0, le=MAX_INT, description="created >= (ms)")] = None,
    until: Annotated[int | None, Query(ge=0, le=MAX_INT, description="created < (ms)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,16}\.\d{1,18}$", max_length=40)] = None,
) -> dict[str, Any]:
    flt = BlockFilter(kind=kind, scope=scope, tag=tag, author=author, since=since, until=until)
    page = await rt.off.read(rt.node.list_blocks, flt, limit=limit, cursor=cursor)
    return {"items": [b.to_dict() for b in page.items], "next_cursor": page.next_cursor}


@router.get(
    "/blocks/{block_id}",
    summary="One block with its provenance",
    response_model=BlockOut,
    response_model_exclude_unset=True,
    responses=_LOOKUP_ERRORS,
)
async def get_block(block_id: BlockId, rt: Rt) -> dict[str, Any]:
    block, prov = await rt.off.read(_lookup, rt.node, block_id)
    return {"block": block.to_dict(), "provenance": asdict(prov)}


@router.get(
    "/blocks/{block_id}/verify",
    summary="Who wrote a block, and does its signature verify",
    response_model=ProvenanceOut,
    responses=_LOOKUP_ERRORS,
)
async def verify(block_id: BlockId, rt: Rt) -> dict[str, Any]:
    _, prov = await rt.off.read(_lookup, rt.node, block_id)
    return asdict(prov)


def _lookup(node: Node, block_id: str) -> tuple[Block, Provenance]:
    full = node.store.resolve_prefix(block_id)
    try:
        return node.get(full), node.provenance(full)
    except ErasedError as exc:
        tomb = node.store.tombstone_for(full)
        raise ErasedBlockError(exc.message, tomb.to_dict() if tomb else None) from exc


@router.get(
    "/search",
    summary="Keyword search over live blocks, best match first",
    response_model=SearchOut,
    response_model_exclude_unset=True,
)
async def search(
    rt: Rt,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="Words to find.")],
    kind: KindQ = None,
    scope: ScopeQ = None,
    tag: TagQ = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH)] = 10,
) -> dict[str, Any]:
    flt = BlockFilter(kind=kind, scope=scope, tag=tag)
    hits = await rt.off.read(rt.node.search, q, flt, limit=limit)
    return {"hits": [{"score": h.score, "block": h.block.to_dict()} for h in hits]}
