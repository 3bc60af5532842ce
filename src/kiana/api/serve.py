"""``kiana serve``: run the API with uvicorn, safely.

Without the bearer token the API may only listen on a loopback address.
Access logs never contain query strings (search words are memory content)
and uvicorn never logs request bodies.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from kiana.api.app import create_app
from kiana.api.sessions import Sessions
from kiana.config import Settings
from kiana.errors import ConfigError
from kiana.home import read_token
from kiana.node import Node


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, require_token: bool) -> None:
    """Refuse to expose an unauthenticated API beyond this machine."""
    if not require_token and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host or 'all interfaces'} without the API token: "
            "api.require_token = false is only allowed on a loopback address such as "
            "127.0.0.1. Set api.require_token = true or api.host = 127.0.0.1."
        )


class StripQueryFilter(logging.Filter):
    """Drop the query string from uvicorn access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def log_config(level: str) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["strip_query"] = {"()": StripQueryFilter}
    config["handlers"]["access"]["filters"] = ["strip_query"]
    config["loggers"]["kiana"] = {"handlers": ["default"], "level": level.upper()}
    return config


def make_server(settings: Settings, app: ASGIApp) -> uvicorn.Server:
    check_bind(settings.api_host, settings.api_require_token)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        access_log=True,
        ws="none",
        lifespan="on",
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(settings: Settings, *, on_started: Callable[[str, float], None] | None = None) -> None:
    """Open the node and serve until interrupted. Errors surface before binding.

    ``on_started(path, ttl_s)`` is called once the server answers, from a thread, with a
    fresh one-time login link (``/login#once=...``) made in this process: printing a
    link needs no connection to the server, not even over loopback.
    """
    check_bind(settings.api_host, settings.api_require_token)
    if settings.api_require_token:
        read_token(settings)
    node = Node.open(settings)
    sessions = Sessions()
    try:
        server = make_server(settings, create_app(settings, node=node, sessions=sessions))
        if on_started is not None:
            threading.Thread(
                target=_when_started,
                args=(server, sessions, on_started),
                name="kiana-serve-link",
                daemon=True,
            ).start()
        server.run()
    finally:
        node.close()


def _when_started(
    server: uvicorn.Server, sessions: Sessions, on_started: Callable[[str, float], None]
) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    on_started(f"/login#once={sessions.new_link()}", sessions.link_ttl_s)
