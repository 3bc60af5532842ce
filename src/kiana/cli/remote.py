"""Talk to a running ``kiana serve`` over its HTTP API (stdlib only).

Live mesh state (links, RTT, pairing on the running listener) exists only inside
the serving process; CLI commands that show or change it ask that process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from kiana.config import Settings
from kiana.errors import KianaError
from kiana.home import read_token


class RemoteError(KianaError):
    code = "remote_error"

    def __init__(self, message: str, code: str = "remote_error") -> None:
        super().__init__(message)
        self.code = code


class Remote:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                raise RemoteError(err["message"], err.get("code", "remote_error")) from exc
            except (ValueError, KeyError, TypeError):
                raise RemoteError(f"the node answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"cannot reach the running node at {self.base}: {exc}") from exc


def running_node(settings: Settings) -> Remote | None:
    """The running node's API if ``kiana serve`` answers on this home's address, else None."""
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"http://{host}:{settings.api_port}"
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=0.5) as resp:
            if resp.status != 200:
                return None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    token = read_token(settings) if settings.api_require_token else None
    remote = Remote(base, token)
    try:
        status = remote.call("GET", "/api/v1/status")
    except RemoteError:
        return None
    # Another mind's node may listen on the same port: only talk to our own.
    from kiana.home import load_identity

    _, genesis = load_identity(settings)
    if status.get("mind", {}).get("id") != genesis.mind_id:
        return None
    return remote
