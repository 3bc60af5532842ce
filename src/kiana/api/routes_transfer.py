"""Export the mind as JSON Lines, and import such a file back (verified, idempotent)."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kiana.api.deps import Rt
from kiana.api.schemas import ErrorOut, ImportOut
from kiana.node import Node
from kiana.transfer import ImportReport, export_lines, import_lines

NDJSON = "application/x-ndjson"
EXPORT_BATCH = 500
SPOOL_MEMORY = 8 * 1024 * 1024  # larger uploads spill to a temporary file
SPOOL_FLUSH = 1024 * 1024
MAX_REPORTED_ERRORS = 1000

router = APIRouter(tags=["transfer"])


@router.get(
    "/export",
    summary="Export every block and tombstone as JSON Lines",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}},
)
async def export(rt: Rt) -> StreamingResponse:
    lines = export_lines(rt.node)
    # The first batch is read before the response starts, so a failing store is a clean error.
    first = await rt.off.read(_take, lines, EXPORT_BATCH)

    async def body() -> AsyncIterator[bytes]:
        batch = first
        while batch:
            yield "".join(f"{line}\n" for line in batch).encode("utf-8")
            batch = await rt.off.read(_take, lines, EXPORT_BATCH)

    filename = f"kiana-export-{rt.node.mind_id}.jsonl"
    return StreamingResponse(
        body(),
        media_type=NDJSON,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _take(lines: Iterator[str], n: int) -> list[str]:
    return list(itertools.islice(lines, n))


@router.post(
    "/import",
    summary="Import a JSON Lines export: verify every record, store what is new",
    description="Bad lines are reported with their line number and error code and are never "
    "stored; good lines are. Importing the same file twice stores nothing the second time.",
    response_model=ImportOut,
    responses={413: {"model": ErrorOut, "description": "Upload too large"}},
    openapi_extra={
        "requestBody": {"required": True, "content": {NDJSON: {"schema": {"type": "string"}}}}
    },
)
async def import_(request: Request, rt: Rt) -> dict[str, Any]:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 (closed below)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= SPOOL_FLUSH:
                await asyncio.to_thread(spool.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(spool.write, bytes(pending))
        report = await rt.off.write(_import_spooled, rt.node, spool)
    finally:
        await asyncio.to_thread(spool.close)
    return _report(report)


def _import_spooled(node: Node, spool: IO[bytes]) -> ImportReport:
    spool.seek(0)
    return import_lines(node, spool)


def _report(report: ImportReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "lines": report.lines,
        "stored": report.stored,
        "duplicates": report.duplicates,
        "refused_erased": report.refused_erased,
        "tombstones": report.tombstones,
        "errors": [
            {"line": line, "code": code, "message": message[:500]}
            for line, code, message in report.errors[:MAX_REPORTED_ERRORS]
        ],
        "errors_total": len(report.errors),
    }
