"""The dashboard's routes: login/logout and one-time login links, live events, file upload,
and its static files."""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from kiana.api.deps import Rt, runtime_of
from kiana.api.errors import error_response, is_openai_path
from kiana.api.live import event_stream
from kiana.api.schemas_mesh import FileAddedOut, LinkOut, LoginIn, LoginOut, MeOut
from kiana.api.sessions import CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL_S, LinkCheck, cookie
from kiana.errors import InputError
from kiana.web import DIST

auth = APIRouter(tags=["dashboard"])
api = APIRouter(tags=["dashboard"])
static = APIRouter(include_in_schema=False)

MAX_UPLOAD = 16 * 1024 * 1024
_NAME = re.compile(r"^[\w][\w .-]{0,120}\.(md|markdown|txt|text)$", re.IGNORECASE)


_LINK_ERRORS = {
    LinkCheck.USED: ("link_used", "this login link was already used"),
    LinkCheck.EXPIRED: ("link_expired", "this login link has expired"),
    LinkCheck.UNKNOWN: ("link_invalid", "this login link is not valid for this node"),
}


@auth.post(
    "/auth/login",
    summary="Exchange the API token or a one-time link's nonce for a session cookie",
    response_model=LoginOut,
)
async def login(request: Request, body: LoginIn) -> Response:
    rt = runtime_of(request.app)
    if not rt.sessions.allow_attempt():
        return error_response(429, "rate_limited", "too many failed logins; wait a minute")
    if body.once is not None:
        check = rt.sessions.use_link(body.once)
        if check is not LinkCheck.OK:
            rt.sessions.failed()
            code, message = _LINK_ERRORS[check]
            return error_response(401, code, f"{message}; run 'kiana open' for a new one")
    elif (
        body.token is None
        or rt.token is None
        or not hmac.compare_digest(body.token.encode(), rt.token.encode())
    ):
        rt.sessions.failed()
        return error_response(401, "unauthorized", "that is not this node's API token")
    sid, session = rt.sessions.create()
    response = JSONResponse({"csrf": session.csrf})
    common: dict[str, Any] = {"max_age": SESSION_TTL_S, "samesite": "strict", "path": "/"}
    response.set_cookie(SESSION_COOKIE, sid, httponly=True, **common)
    response.set_cookie(CSRF_COOKIE, session.csrf, httponly=False, **common)
    return response


@auth.post("/auth/logout", summary="End this browser's session", status_code=204)
async def logout(request: Request) -> Response:
    rt = runtime_of(request.app)
    rt.sessions.drop(cookie(list(request.scope.get("headers", [])), SESSION_COOKIE))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@auth.get("/auth/me", summary="Whether this browser is logged in", response_model=MeOut)
async def me(request: Request) -> dict[str, Any]:
    rt = runtime_of(request.app)
    session = rt.sessions.get(cookie(list(request.scope.get("headers", [])), SESSION_COOKIE))
    return {"authenticated": session is not None or not rt.settings.api_require_token}


@api.post(
    "/auth/link",
    summary="A one-time login link for the dashboard (what `kiana open` opens)",
    response_model=LinkOut,
)
async def login_link(rt: Rt) -> dict[str, Any]:
    once = rt.sessions.new_link()
    return {"path": f"/login#once={once}", "once": once, "expires_in_s": rt.sessions.link_ttl_s}


@api.post(
    "/files",
    summary="Add a text or Markdown file (raw body), chunked into blocks",
    response_model=FileAddedOut,
)
async def add_file(
    rt: Rt, request: Request, name: Annotated[str, Query(min_length=1, max_length=128)]
) -> dict[str, Any]:
    if not _NAME.match(name):
        raise InputError("only .md, .markdown, .txt or .text files with a plain name")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_UPLOAD:
            raise InputError(f"the file is larger than {MAX_UPLOAD // (1024 * 1024)} MiB")
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("the file is not UTF-8 text") from exc

    def add() -> Any:
        # Kept under HOME/uploads/<name>: the file is the blocks' source, so uploading
        # the same file again stores nothing new, and a changed one adds its new chunks.
        folder = rt.settings.home / "uploads"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / name
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(bytes(data))
        tmp.replace(path)
        return rt.node.add_files([path])

    report = await rt.off.write(add)
    return {
        "file": name,
        "chunks": report.chunks_stored,
        "skipped": report.chunks_skipped,
        "errors": [message for _path, message in report.errors],
    }


@api.get("/events", summary="Live updates (server-sent events): blocks, peers, sync")
async def events(rt: Rt, request: Request) -> StreamingResponse:
    return StreamingResponse(
        event_stream(rt, request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


_API_PREFIXES = ("/api/", "/v1/", "/auth/", "/docs", "/redoc", "/openapi.json")


@static.get("/{path:path}")
async def dashboard(path: str) -> Response:
    """The dashboard: its files, and index.html for its client-side routes."""
    if ("/" + path).startswith(_API_PREFIXES):
        openai = is_openai_path("/" + path)
        return error_response(404, "not_found", "no such route", openai=openai)
    index = DIST / "index.html"
    if not index.exists():
        return error_response(
            404, "not_found", "the dashboard is not built in this install (scripts/build-web)"
        )
    target = (DIST / path).resolve()
    if path and target.is_file() and DIST.resolve() in target.parents:
        return FileResponse(target)
    return FileResponse(index, headers={"Cache-Control": "no-store"})
