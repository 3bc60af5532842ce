"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Codes are stable and machine-readable; messages are for people and never
echo more than a short, clipped piece of what the client sent.

Under ``/v1/`` (the OpenAI-compatible routes) the same error also carries
OpenAI's ``type`` and ``param`` fields, and request validation fails with 400
as OpenAI's API does: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from kiana.errors import ErasedError, InputError, KianaError

log = logging.getLogger("kiana.api")

MAX_MESSAGE = 500
MAX_DETAILS = 20
OPENAI_PREFIX = "/v1/"

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "erased",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "not_ready",
}


class InvalidJsonError(InputError):
    code = "invalid_json"
    http_status = 400


class ModelNotFoundError(KianaError):
    """A request names a model this node does not serve."""

    code = "model_not_found"
    http_status = 404


class NotReadyError(KianaError):
    code = "not_ready"
    http_status = 503


class ErasedBlockError(ErasedError):
    """``ErasedError`` that also names the tombstone, so a client can fetch or verify it."""

    def __init__(self, message: str, tombstone: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.tombstone = tombstone


class RequestTooLarge(StarletteHTTPException):
    """Raised while the body is received; an HTTPException so FastAPI passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return OPENAI_TYPES.get(status, "invalid_request_error")


def error_content(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": clip(message), **extra}}


def openai_error_content(
    status: int, code: str, message: str, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    return error_content(code, message, type=openai_type(status), param=param, **extra)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    openai: bool = False,
    **extra: Any,
) -> JSONResponse:
    content = (
        openai_error_content(status, code, message, **extra)
        if openai
        else error_content(code, message, **extra)
    )
    return JSONResponse(content, status_code=status, headers=headers)


async def _kiana_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KianaError)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s (%s)", request.method, request.url.path, exc.code, exc.message)
    extra: dict[str, Any] = {}
    if isinstance(exc, ErasedBlockError) and exc.tombstone is not None:
        extra["tombstone"] = exc.tombstone
    openai = is_openai_path(request.url.path)
    return error_response(exc.http_status, exc.code, exc.message, openai=openai, **extra)


def _loc(loc: Any) -> str:
    parts = loc if isinstance(loc, list | tuple) else (loc,)
    return ".".join(clip(str(p), 64) for p in parts)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    openai = is_openai_path(request.url.path)
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = str(err.get("ctx", {}).get("error", "decode error"))
            return error_response(
                400, "invalid_json", f"the body is not valid JSON: {reason}", openai=openai
            )
    body_unreadable = any(tuple(e.get("loc", ())) == ("body",) for e in errors)
    if body_unreadable and "json" not in request.headers.get("content-type", "").lower():
        return error_response(
            415,
            "unsupported_media_type",
            "send the body as JSON (Content-Type: application/json)",
            openai=openai,
        )
    details = [
        {"loc": _loc(e.get("loc", ())), "type": str(e.get("type", "")), "message": str(e["msg"])}
        for e in errors[:MAX_DETAILS]
    ]
    summary = "; ".join(f"{d['loc']}: {d['message']}" for d in details)
    message = f"invalid request: {summary}"
    if openai:  # OpenAI answers 400 and names the first offending parameter
        param = _loc(tuple(errors[0].get("loc", ()))[1:]) if errors else None
        return error_response(
            400, "invalid_request", message, openai=True, param=param or None, details=details
        )
    return error_response(422, "invalid_request", message, details=details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI could not decode the body (bad UTF-8, nesting too deep, ...).
        code, message = "invalid_json", "the body is not valid JSON"
    openai = is_openai_path(request.url.path)
    return error_response(exc.status_code, code, message, headers=exc.headers, openai=openai)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s: unexpected %s", request.method, request.url.path, type(exc).__name__)
    openai = is_openai_path(request.url.path)
    return error_response(
        500, "internal_error", "internal error; see the server log", openai=openai
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KianaError, _kiana_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
