"""kiana ledger show / verify and the ledger routes, on a chain sealed by this device."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api_helpers import ApiClient, error_code
from tests.helpers_cli import run_kiana
from tests.mind_helpers import quiet_settings

from kiana.api.app import create_app
from kiana.ledger import Ledger, SqlLedgerStore, commit_record
from kiana.node import Node


def sealed_home(home: Path, blocks: int = 3) -> list[str]:
    """A mind whose ledger holds ``blocks`` sealed blocks, each committing one fact."""
    settings = quiet_settings(home)
    with Node.init(settings, mind_name="Family", device_name="laptop") as node:
        node.auto_embed = False
        ledger = Ledger(node.genesis, store=SqlLedgerStore(node.store.db))
        hashes = []
        for i in range(blocks):
            fact = node.remember(f"fact {i}").block
            ledger.add_records([commit_record(fact.id)])
            block = ledger.propose(node.keys, node.genesis.created + 5_000 * (i + 1))
            assert block is not None
            hashes.append(block.hash)
    return hashes


def test_show_and_verify_a_good_chain(tmp_path: Path) -> None:
    hashes = sealed_home(tmp_path)
    shown = run_kiana(tmp_path, "ledger", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    blocks = json.loads(shown.stdout)["blocks"]
    assert [b["hash"] for b in blocks] == hashes[::-1]  # newest first
    assert all(b["records"][0]["kind"] == "commit" for b in blocks)
    text = run_kiana(tmp_path, "ledger", "show", "--limit", "1")
    assert text.returncode == 0 and "#3" in text.stdout and "#2" not in text.stdout
    ok = run_kiana(tmp_path, "ledger", "verify")
    assert ok.returncode == 0 and "3 sealed blocks verified" in ok.stdout


def test_verify_points_at_the_first_bad_link(tmp_path: Path) -> None:
    hashes = sealed_home(tmp_path, blocks=4)
    with Node.open(quiet_settings(tmp_path)) as node:

        def tamper(c):  # type: ignore[no-untyped-def]
            row = c.one("SELECT data FROM ledger_blocks WHERE hash = ?", (hashes[1],))
            data = json.loads(row[0])
            data["time"] += 1  # a rewritten header: the signature no longer matches
            c.execute(
                "UPDATE ledger_blocks SET data = ? WHERE hash = ?", (json.dumps(data), hashes[1])
            )

        node.store.db.write(tamper)
    bad = run_kiana(tmp_path, "ledger", "verify", "--json")
    assert bad.returncode == 1
    info = json.loads(bad.stdout)
    assert info["ok"] is False and info["first_bad_height"] == 2 and info["height"] == 1
    assert "broken at block 2" in bad.stderr


def test_empty_ledger(tmp_path: Path) -> None:
    run = run_kiana(tmp_path, "init")
    assert run.returncode == 0, run.stderr
    shown = run_kiana(tmp_path, "ledger", "show")
    assert shown.returncode == 0 and "only its genesis" in shown.stdout
    assert run_kiana(tmp_path, "ledger", "verify").returncode == 0


def test_ledger_routes(tmp_path: Path) -> None:
    hashes = sealed_home(tmp_path / "home", blocks=2)
    settings = quiet_settings(tmp_path / "home")
    with ApiClient(create_app(settings), settings) as api:
        listed = api.get("/api/v1/ledger", params={"limit": 1})
        assert listed.status_code == 200, listed.text
        assert [b["hash"] for b in listed.json()["blocks"]] == [hashes[-1]]
        verified = api.get("/api/v1/ledger/verify")
        assert verified.status_code == 200 and verified.json()["ok"] is True
        assert verified.json()["height"] == 2
        bad = api.get("/api/v1/ledger", params={"limit": 0})
        assert bad.status_code == 422 and error_code(bad) == "invalid_request"


def test_pin_unpin_pins_offline(tmp_path: Path) -> None:
    sealed_home(tmp_path, blocks=1)
    with Node.open(quiet_settings(tmp_path)) as node:
        block = next(iter(node.store.iter_blocks()))
    pinned = run_kiana(tmp_path, "pin", block.id[:12])
    assert pinned.returncode == 0 and "1 pinned" in pinned.stdout, pinned.stderr
    listed = json.loads(run_kiana(tmp_path, "pins", "--json").stdout)
    assert listed == {"pins": [block.id]}
    assert run_kiana(tmp_path, "unpin", block.id).returncode == 0
    assert json.loads(run_kiana(tmp_path, "pins", "--json").stdout) == {"pins": []}
    missing = run_kiana(tmp_path, "pin", "ffffffffffff")
    assert missing.returncode == 4 and "no block" in missing.stderr
