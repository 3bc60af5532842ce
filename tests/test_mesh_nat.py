"""WebRTC links through TURN between two devices behind NAT (network namespaces).

::

    public 203.0.113.0/24:  coturn (server, .10)   home node H (.11)
    NAT-A (203.0.113.2) ── A 10.1.0.2         NAT-B (203.0.113.3) ── B 10.2.0.2

The homes are created on this filesystem first: H inits, A and B pair with it
in-process over loopback. Then ``kiana serve`` runs for each inside its namespace
with discovery off and H's public address as the only configured peer. A and B
link to H over TCP; their own link is a WebRTC data channel signalled through H
and relayed by coturn (``mesh.relay_only``). Everything is checked from inside
the namespaces through the real CLI (``kiana peers --json``) and HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.helpers_cli import clean_env, kiana_argv
from tests.mesh_helpers import init_node, pair_into, start_service, stop_service
from tests.polling import wait_for

from kiana.home import load_identity, read_token
from netns import Coturn, NatTopology, start_coturn, stop_process, tcp_probe

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(240)]

MESH_PORT = 7475
API_PORT = 8765
TURN_USER = "kiana"
TURN_PASSWORD = "correct-horse"
REALM = "kiana.test"

API_CALL = r"""
import json, sys, urllib.request
method, url, token, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
req = urllib.request.Request(url, data=body.encode() if body else None, method=method)
req.add_header("Content-Type", "application/json")
req.add_header("Authorization", "Bearer " + token)
with urllib.request.urlopen(req, timeout=10) as resp:
    print(resp.read().decode())
"""


@dataclass
class Device:
    name: str  # host name in the topology
    home: Path
    device_id: str
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None


def make_homes(root: Path) -> tuple[Path, Path, Path]:
    """H inits; A and B pair with H in-process over loopback (root namespace, port 0)."""

    async def pair() -> None:
        h = await start_service(init_node(root / "h", "home"))
        try:
            await pair_into(h, root / "a", "phone")
            await pair_into(h, root / "b", "laptop")
        finally:
            await stop_service(h)

    asyncio.run(pair())
    return root / "h", root / "a", root / "b"


def device_id(home: Path) -> str:
    from tests.mesh_helpers import settings_for

    keys, _ = load_identity(settings_for(home))
    return str(keys.device_id)


def node_env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        {
            "KIANA_HOME": str(home),
            "KIANA_MESH_HOST": "0.0.0.0",
            "KIANA_MESH_PORT": str(MESH_PORT),
            "KIANA_MESH_DISCOVERY": "0",
            "KIANA_MESH_HEARTBEAT_MS": "500",
            "KIANA_API_PORT": str(API_PORT),
            **extra,
        }
    )


class Mesh:
    """The topology, coturn and the three serving nodes; all stopped on exit."""

    def __init__(self, root: Path, *, turn_password: str = TURN_PASSWORD) -> None:
        self.root = root
        self.turn_password = turn_password
        self.net = NatTopology(public=("server", "home"))
        self.turn: Coturn | None = None
        self.devices: dict[str, Device] = {}

    def __enter__(self) -> Mesh:
        h_home, a_home, b_home = make_homes(self.root)
        self.net.__enter__()
        try:
            self.turn = start_coturn(
                self.net, "server", user=TURN_USER, password=TURN_PASSWORD, realm=REALM
            )
            h_addr = f"{self.net.address('home')}:{MESH_PORT}"
            ice = {
                "KIANA_MESH_PEERS": h_addr,
                "KIANA_MESH_ICE_SERVERS": f"turn:{self.turn.listen_ip}:{self.turn.port}",
                "KIANA_MESH_TURN_USERNAME": TURN_USER,
                "KIANA_MESH_TURN_PASSWORD": self.turn_password,
                "KIANA_MESH_RELAY_ONLY": "1",
            }
            for host, home, extra in (
                ("home", h_home, {}),
                ("a", a_home, ice),
                ("b", b_home, ice),
            ):
                dev = Device(host, home, device_id(home), node_env(home, **extra))
                self.devices[host] = dev
                log = (self.root / f"{host}.log").open("w")
                dev.proc = self.net.run(
                    host,
                    kiana_argv(home, "serve"),
                    env=dev.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                log.close()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for dev in self.devices.values():
            if dev.proc is not None:
                stop_process(dev.proc, timeout=10)
        if self.turn is not None:
            self.turn.stop()
        self.net.close()

    def logs(self) -> str:
        out = []
        for host in self.devices:
            path = self.root / f"{host}.log"
            if path.exists():
                out.append(f"--- {host} ---\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(out)

    # -- inside the namespaces ---------------------------------------------------------

    def cli(self, host: str, *args: str) -> Any:
        dev = self.devices[host]
        env = [f"{k}={v}" for k, v in dev.env.items() if k.startswith(("KIANA_", "PATH"))]
        proc = self.net.check(host, ["env", *env, *kiana_argv(dev.home, *args)], timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"kiana {' '.join(args)} failed on {host}: {proc.stderr}")
        return json.loads(proc.stdout)

    def peers(self, host: str) -> dict[str, dict[str, Any]]:
        with contextlib.suppress(RuntimeError, ValueError):
            return {p["device"]: p for p in self.cli(host, "peers", "--json")["peers"]}
        return {}

    def api(self, host: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        dev = self.devices[host]
        token = read_token(_settings(dev.home))
        url = f"http://127.0.0.1:{API_PORT}/api/v1{path}"
        argv = [
            sys.executable,
            "-c",
            API_CALL,
            method,
            url,
            token,
            json.dumps(body) if body else "",
        ]
        proc = self.net.check(host, argv, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"{method} {path} on {host} failed: {proc.stderr}")
        return json.loads(proc.stdout)

    def link(self, host: str, other: str) -> dict[str, Any] | None:
        return self.peers(host).get(self.devices[other].device_id)


def _settings(home: Path) -> Any:
    from tests.mesh_helpers import settings_for

    return settings_for(home)


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, mesh: Mesh) -> Any:
    return wait_for(check, timeout_s, what, interval_s=0.5, context=mesh.logs)


@contextlib.contextmanager
def nat_mesh(root: Path, **kwargs: Any) -> Iterator[Mesh]:
    with Mesh(root, **kwargs) as mesh:
        wait_until(
            lambda: all((mesh.link(h, "home") or {}).get("state") == "up" for h in ("a", "b")),
            60,
            "A and B to link to the home node",
            mesh,
        )
        yield mesh


def test_devices_behind_two_nats_link_through_turn(tmp_path: Path) -> None:
    with nat_mesh(tmp_path) as mesh:
        net = mesh.net
        # the NATs drop what is not an answer: A cannot reach B's private address
        assert "error" in tcp_probe(net, "a", net.address("b"), MESH_PORT)
        assert "error" in tcp_probe(net, "b", net.address("a"), MESH_PORT)
        for x, y in (("a", "b"), ("b", "a")):
            peer = wait_until(
                lambda x=x, y=y: p if (p := mesh.link(x, y)) and p["state"] == "up" else None,
                60,
                f"the WebRTC link {x}→{y}",
                mesh,
            )
            assert peer["link"] == "relayed", peer
            assert peer["remote"].startswith("webrtc:"), peer
            assert peer["addresses"] == []
            assert mesh.link(x, "home")["link"] == "direct"  # type: ignore[index]
        a_id, b_id = mesh.devices["a"].device_id, mesh.devices["b"].device_id
        mesh.api("a", "POST", "/mesh/messages", {"to": b_id, "channel": "app.test", "text": "hi B"})
        mesh.api("b", "POST", "/mesh/messages", {"to": a_id, "channel": "app.test", "text": "hi A"})
        for host, text, sender in (("b", "hi B", a_id), ("a", "hi A", b_id)):
            got = wait_until(
                lambda host=host: mesh.api(host, "GET", "/mesh/inbox?channel=app.test")["messages"],
                30,
                f"the message on {host}",
                mesh,
            )
            assert [(m["text"], m["sender"]) for m in got] == [(text, sender)]
        # the messages went over the relayed link, not through the home node
        assert mesh.link("a", "b")["bytes_out"] > 0  # type: ignore[index]


def test_wrong_turn_password_is_reported(tmp_path: Path) -> None:
    with nat_mesh(tmp_path, turn_password="wrong-password") as mesh:
        a_id, b_id = mesh.devices["a"].device_id, mesh.devices["b"].device_id
        offerer, other = ("a", "b") if a_id < b_id else ("b", "a")
        peer = wait_until(
            lambda: p if (p := mesh.link(offerer, other)) and p["last_error"] else None,
            60,
            "the TURN error",
            mesh,
        )
        assert "refused the credentials" in peer["last_error"], peer
        assert "turn_password" in peer["last_error"]
        assert peer["link"] is None and peer["state"] in ("down", "connecting")
        time.sleep(2)
        assert (mesh.link(other, offerer) or {}).get("link") is None
