"""kiana pair / join / devices / peers as real processes, linked over loopback TCP.

(The same commands across network namespaces with mDNS: tests/test_mesh_netns.py.)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.helpers_cli import clean_env, kiana_argv, run_kiana

pytestmark = pytest.mark.timeout(120)


def init(home: Path, name: str = "laptop") -> None:
    result = run_kiana(home, "init", "--name", "Family", "--device-name", name)
    assert result.returncode == 0, result.stderr


def start_pair(home: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        kiana_argv(home, "pair", "--json", "--no-qr", *args),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, json.loads(line)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def devices(home: Path) -> dict[str, Any]:
    result = run_kiana(home, "devices", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_pair_join_devices_and_revoke(tmp_path: Path) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    init(laptop)
    proc, invite = start_pair(laptop)
    joined = run_kiana(
        phone, "join", invite["code"], "--address", f"127.0.0.1:{invite['port']}",
        "--name", "phone", "--json",
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    info = json.loads(joined.stdout)
    code, out, err = finish(proc)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["state"] == "joined" and result["device"] == info["device"]

    on_laptop, on_phone = devices(laptop), devices(phone)
    assert {d["device_id"] for d in on_laptop["devices"]} == {
        d["device_id"] for d in on_phone["devices"]
    }
    assert on_phone["this_device"] == info["device"]
    phone_row = next(d for d in on_laptop["devices"] if d["device_id"] == info["device"])
    laptop_row = next(d for d in on_laptop["devices"] if d["device_id"] != info["device"])
    assert phone_row["role"] == "member" and phone_row["name"] == "phone"
    assert phone_row["person"] == laptop_row["person"] == info["person"]
    status = json.loads(run_kiana(phone, "status", "--json").stdout)
    assert status["mind"]["id"] == info["mind"]

    # The joined phone cannot invite (members are not authorities) and cannot revoke.
    refused = run_kiana(phone, "pair", "--no-qr")
    assert refused.returncode == 1 and "authority" in refused.stderr
    revoked = run_kiana(laptop, "devices", "revoke", info["device"], "--yes")
    assert revoked.returncode == 0, revoked.stderr
    row = next(d for d in devices(laptop)["devices"] if d["device_id"] == info["device"])
    assert row["revoked"] is not None
    again = run_kiana(laptop, "devices", "revoke", info["device"], "--yes")
    assert again.returncode == 1 and "already revoked" in again.stderr


def test_wrong_code_burns_it_and_changes_nothing(tmp_path: Path) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    init(laptop)
    proc, invite = start_pair(laptop)
    plate, first, second = invite["code"].split("-")
    wrong = f"{plate}-{second}-{first}" if first != second else f"{plate}-{first}-zebra"
    address = f"127.0.0.1:{invite['port']}"
    bad = run_kiana(phone, "join", wrong, "--address", address)
    assert bad.returncode == 1
    assert "does not match" in bad.stderr
    assert not (phone / "mind.json").exists() and not (phone / "keys").exists()
    code, _, err = finish(proc)
    assert code == 1 and "pairing failed" in err
    assert len(devices(laptop)["devices"]) == 1
    # The right code is no use now: the listener is gone with the burnt code.
    late = run_kiana(phone, "join", invite["code"], "--address", address, "--timeout", "3")
    assert late.returncode == 1 and not (phone / "mind.json").exists()


def test_join_refuses_an_initialised_home_and_typos(tmp_path: Path) -> None:
    init(tmp_path / "a")
    taken = run_kiana(tmp_path / "a", "join", "7-crane-orbit", "--address", "127.0.0.1:9")
    assert taken.returncode == 2 and "already holds" in taken.stderr
    typo = run_kiana(tmp_path / "b", "join", "7-crane", "--address", "127.0.0.1:9")
    assert typo.returncode == 1 and "code" in typo.stderr
    down = run_kiana(
        tmp_path / "c", "join", "7-crane-orbit", "--address", "127.0.0.1:9", "--timeout", "2"
    )
    assert down.returncode == 1 and "cannot connect" in down.stderr
    assert not (tmp_path / "c" / "mind.json").exists()


def test_peers_needs_a_running_node_and_add_remembers(tmp_path: Path) -> None:
    init(tmp_path)
    peers = run_kiana(tmp_path, "peers")
    assert peers.returncode == 1 and "kiana serve is not running" in peers.stderr
    ping = run_kiana(tmp_path, "peers", "ping", "aaaa-bbbb-cccc-dddd")
    assert ping.returncode == 1 and "kiana serve" in ping.stderr
    added = run_kiana(tmp_path, "peers", "add", "192.0.2.7:7475")
    assert added.returncode == 0 and "192.0.2.7:7475" in added.stdout
    bad = run_kiana(tmp_path, "peers", "add", "not an address:x")
    assert bad.returncode == 1 and "host:port" in bad.stderr
    listing = run_kiana(tmp_path, "devices")
    assert listing.returncode == 0 and "laptop" in listing.stdout and "authority" in listing.stdout
    assert "no live link state" in listing.stderr
