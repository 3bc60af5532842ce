"""The FastAPI application: a thin HTTP shell over ``kiana.node.Node``.

Nothing happens at import time. ``create_app`` builds an app whose lifespan
opens the node (unless one is passed in), starts the offloader and reads
the API token; shutdown closes what the lifespan opened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from kiana import __version__
from kiana.api import (
    routes_blocks,
    routes_chat,
    routes_mesh,
    routes_openai,
    routes_state,
    routes_system,
    routes_transfer,
    routes_web,
)
from kiana.api.auth import BearerAuthMiddleware
from kiana.api.deps import ChatRuntime, Runtime
from kiana.api.errors import OPENAI_PREFIX, install_error_handlers
from kiana.api.limits import BodyLimitMiddleware
from kiana.api.sessions import Sessions
from kiana.config import Settings
from kiana.home import read_token
from kiana.mesh.service import MeshService
from kiana.node import Node
from kiana.offload import Offloader

API_PREFIX = "/api/v1"
IMPORT_PATH = f"{API_PREFIX}/import"
FILES_PATH = f"{API_PREFIX}/files"
BODY_SLACK = 64 * 1024  # JSON framing around a block body of max_body_bytes
DEFAULT_MAX_IMPORT = 256 * 1024 * 1024

DESCRIPTION = """\
The HTTP API of one KI_ana node. Every route under `/api/v1` needs
`Authorization: Bearer <token>` (the token is in `$KIANA_HOME/api-token`).
Errors are always `{"error": {"code": "...", "message": "..."}}` with a stable code.

`/v1` is an OpenAI-compatible API with KI_ana's memory: use `http://host:port/v1` as an
OpenAI client's `base_url` and the token as its `api_key`.
"""


class KianaAPI(FastAPI):
    """FastAPI that documents the bearer token on every protected operation."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
        }
        error_ref = {"$ref": "#/components/schemas/ErrorOut"}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith((API_PREFIX, OPENAI_PREFIX)):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearerAuth": []}]
                operation.setdefault("responses", {})["401"] = {
                    "description": "Missing or wrong bearer token",
                    "content": {"application/json": {"schema": error_ref}},
                }
        return schema


def create_app(
    settings: Settings,
    *,
    node: Node | None = None,
    max_import_bytes: int = DEFAULT_MAX_IMPORT,
    sessions: Sessions | None = None,
) -> FastAPI:
    """Build the app. A ``node`` passed in is used as is and left open on shutdown.

    ``sessions``: the dashboard's login sessions and one-time links, when the caller
    needs them too (``kiana serve`` makes its first login link there, in process).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        off = Offloader()
        try:
            token = await off.read(read_token, settings) if settings.api_require_token else None
            current = node if node is not None else await off.write(Node.open, settings)
        except BaseException:
            await asyncio.to_thread(off.close)
            raise
        chat = ChatRuntime(current)
        mesh: MeshService | None = None
        if settings.mesh_enabled:
            mesh = MeshService(current, settings)
            try:
                await mesh.start()
            except BaseException:
                await mesh.stop()
                if node is None:
                    await off.write(current.close)
                await asyncio.to_thread(off.close)
                raise
        app.state.runtime = Runtime(
            settings=settings,
            node=current,
            off=off,
            token=token,
            chat=chat,
            mesh=mesh,
            sessions=sessions if sessions is not None else Sessions(),
        )
        try:
            yield
        finally:
            app.state.runtime = None
            try:
                if mesh is not None:
                    await mesh.stop()
                await chat.close()  # cancels running answers, closes the chat model
            finally:
                try:
                    if node is None:
                        await off.write(current.close)
                finally:
                    await asyncio.to_thread(off.close)

    app = KianaAPI(
        title="KI_ana",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(routes_system.health)
    app.include_router(routes_system.system, prefix=API_PREFIX)
    app.include_router(routes_blocks.router, prefix=API_PREFIX)
    app.include_router(routes_transfer.router, prefix=API_PREFIX)
    app.include_router(routes_chat.router, prefix=API_PREFIX)
    app.include_router(routes_mesh.router, prefix=API_PREFIX)
    app.include_router(routes_state.router, prefix=API_PREFIX)
    app.include_router(routes_web.auth)
    app.include_router(routes_web.api, prefix=API_PREFIX)
    app.include_router(routes_openai.router)

    app.include_router(routes_web.static)  # last: the dashboard's catch-all route
    open_paths = {"/healthz", "/readyz"}
    for docs_path in (
        app.docs_url,
        app.redoc_url,
        app.openapi_url,
        app.swagger_ui_oauth2_redirect_url,
    ):
        if docs_path:
            open_paths.add(docs_path)
    # Added last = runs first: authentication, then the size limit, then routing.
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_body_bytes + BODY_SLACK,
        path_limits={IMPORT_PATH: max_import_bytes, FILES_PATH: routes_web.MAX_UPLOAD},
    )
    app.add_middleware(BearerAuthMiddleware, open_paths=frozenset(open_paths))
    return app
