"""Liveness, readiness, node status and the device list."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kiana.api.deps import Rt, runtime_of
from kiana.api.errors import error_response
from kiana.api.schemas import ErrorOut, HealthOut, StatusOut
from kiana.errors import KianaError

log = logging.getLogger("kiana.api")

READY_TIMEOUT_S = 5.0

health = APIRouter(tags=["health"])
system = APIRouter(tags=["system"])


@health.get("/healthz", summary="Liveness: the process is serving", response_model=HealthOut)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="Readiness: the store answers a trivial read",
    response_model=HealthOut,
    responses={503: {"model": ErrorOut, "description": "Not ready"}},
)
async def readyz(request: Request) -> Any:
    try:
        rt = runtime_of(request.app)
        await asyncio.wait_for(
            rt.off.read(rt.node.store.get_meta, "mind_id"), timeout=READY_TIMEOUT_S
        )
    except (KianaError, TimeoutError) as exc:
        code = exc.code if isinstance(exc, KianaError) else "timeout"
        log.warning("readiness check failed: %s", code)
        return error_response(503, "not_ready", f"the store is not available ({code})")
    return JSONResponse({"status": "ready"})


@system.get("/status", summary="Mind, device, storage and block counts", response_model=StatusOut)
async def status(rt: Rt) -> dict[str, Any]:
    return await rt.off.read(rt.node.status)
