"""What the lifespan opens and every route needs: the node, the offloader, the token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.applications import Starlette

from kiana.api.errors import NotReadyError
from kiana.config import Settings
from kiana.node import Node
from kiana.offload import Offloader


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    node: Node
    off: Offloader
    token: str | None  # None only when settings.api_require_token is False


def runtime_of(app: Starlette) -> Runtime:
    """The runtime stored on ``app.state`` by the lifespan."""
    runtime = getattr(app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise NotReadyError("the service is starting or stopping")
    return runtime


def get_runtime(request: Request) -> Runtime:
    return runtime_of(request.app)


Rt = Annotated[Runtime, Depends(get_runtime)]
