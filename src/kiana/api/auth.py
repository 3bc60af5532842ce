"""Bearer-token authentication for every route outside an explicit open set.

It runs as ASGI middleware, before routing and before any body is read, so
an unauthenticated client learns nothing: not which routes exist, not
whether its JSON parses. OpenAI clients send their ``api_key`` the same way,
so the KI_ana token is the ``api_key`` of the ``/v1`` routes. The dashboard's
browser sends a session cookie instead (``sessions.py``), with a CSRF header on
anything that changes state. The dashboard's own files are public (they hold no
data): ``/``, ``/assets/...`` and the client-side routes.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from kiana.api.deps import runtime_of
from kiana.api.errors import NotReadyError, error_response, is_openai_path
from kiana.api.sessions import SAFE_METHODS, SESSION_COOKIE, cookie, csrf_ok

PROTECTED_PREFIXES = ("/api/", "/v1/")

SCHEME = b"bearer "


def bearer_token(scope: Scope) -> bytes | None:
    """The token of the first ``Authorization: Bearer ...`` header, if any."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            if value[: len(SCHEME)].lower() == SCHEME:
                return bytes(value[len(SCHEME) :].strip())
            return None
    return None


def token_matches(given: bytes | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given, expected.encode("ascii"))


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, *, open_paths: frozenset[str]) -> None:
        self.app = app
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        public = path in self.open_paths or (
            not path.startswith(PROTECTED_PREFIXES) and scope.get("method") in SAFE_METHODS
        )
        if public or path.startswith("/auth/"):
            await self.app(scope, receive, send)
            return
        openai = is_openai_path(scope["path"])
        try:
            runtime = runtime_of(scope["app"])
        except NotReadyError as exc:
            await error_response(503, exc.code, exc.message, openai=openai)(scope, receive, send)
            return
        if not runtime.settings.api_require_token:
            await self.app(scope, receive, send)
            return
        given = bearer_token(scope)
        if runtime.token is not None and token_matches(given, runtime.token):
            await self.app(scope, receive, send)
            return
        if given is None:
            session = runtime.sessions.get(cookie(scope.get("headers", []), SESSION_COOKIE))
            if session is not None:
                if scope.get("method") in SAFE_METHODS or csrf_ok(scope["headers"], session):
                    await self.app(scope, receive, send)
                    return
                response = error_response(
                    403, "csrf_failed", "send the X-CSRF-Token header of this session"
                )
                await response(scope, receive, send)
                return
        if given is None:
            message, challenge = "send 'Authorization: Bearer <token>'", "Bearer"
        else:
            message, challenge = "the bearer token is not valid", 'Bearer error="invalid_token"'
        response = error_response(
            401, "unauthorized", message, headers={"WWW-Authenticate": challenge}, openai=openai
        )
        await response(scope, receive, send)
