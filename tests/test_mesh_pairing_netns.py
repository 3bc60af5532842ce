"""Two pairing codes open at once on one device, each found by mDNS and used by ``kiana join``.

The inviter (``mesh_pairing_child.py``: a real ``MeshService`` with discovery on)
runs in one network namespace of a ``netns.Lan``; the joiners run the real CLI
without ``--address`` in two others, so they find the inviter only by mDNS.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers_cli import clean_env, kiana_argv
from netns import Lan
from test_mesh_discovery import CHILD, _lines

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

INVITER = str(Path(__file__).with_name("mesh_pairing_child.py"))
DISCOVERY_ON = {"KIANA_MESH_DISCOVERY": "1"}


def _next(lines: queue.Queue[str], event: str, timeout: float = 20) -> dict[str, Any]:
    while True:
        found: dict[str, Any] = json.loads(lines.get(timeout=timeout))
        if found["event"] == event:
            return found


def _join(lan: Lan, host: str, home: Path, code: str, name: str) -> dict[str, Any]:
    argv = kiana_argv(home, "join", code, "--name", name, "--timeout", "5", "--json")
    proc = lan.run(host, argv, env=clean_env(DISCOVERY_ON))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _find(lan: Lan, host: str, nameplate: int) -> Any:
    argv = [sys.executable, CHILD, "find", "--nameplate", str(nameplate), "--timeout", "2"]
    proc = lan.run(host, argv)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1])["host"]


def test_two_open_codes_are_both_found_by_mdns_and_each_joins(tmp_path: Path) -> None:
    with Lan(3) as lan:
        home, phone, tablet = lan.hosts
        inviter = lan.run(home, [sys.executable, INVITER, "--home", str(tmp_path / "home")])
        lines = _lines(inviter)
        invites = [_next(lines, "invite"), _next(lines, "invite")]
        first, second = invites
        address = [lan.address(home), 7475]
        # both codes are advertised at once
        assert _find(lan, phone, first["nameplate"]) == address
        assert _find(lan, tablet, second["nameplate"]) == address

        joined = _join(lan, phone, tmp_path / "phone", first["code"], "phone")
        assert joined["inviter"] == f"{lan.address(home)}:7475"
        closed = _next(lines, "state")
        assert closed == {"event": "state", "nameplate": first["nameplate"], "state": "joined"}
        # the used code is withdrawn, the other one is still advertised
        assert _find(lan, tablet, first["nameplate"]) is None
        assert _find(lan, tablet, second["nameplate"]) == address

        other = _join(lan, tablet, tmp_path / "tablet", second["code"], "tablet")
        assert other["mind"] == joined["mind"] and other["device"] != joined["device"]
        closed = _next(lines, "state")
        assert closed == {"event": "state", "nameplate": second["nameplate"], "state": "joined"}
        assert _next(lines, "closed") == {"event": "closed"}
        inviter.wait(timeout=10)
        assert inviter.returncode == 0, inviter.stderr.read() if inviter.stderr else ""
