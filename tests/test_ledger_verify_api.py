"""/api/v1/ledger/verify: the chain result and the commit findings, as `kiana ledger verify`.

Each chain here is sealed by the mind's own device with real keys into a real store,
with the forged situation in it: commits of ids no device has (warnings), a commit
naming a private block (an error), a rewritten block (a bad link).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api_helpers import ApiClient
from tests.helpers_cli import run_kiana
from tests.mind_helpers import quiet_settings

from kiana.api.app import create_app
from kiana.ledger import Ledger, SqlLedgerStore, commit_record
from kiana.ledger.audit import FINDINGS_LIMIT
from kiana.node import Node

ABSENT = [f"{i:02x}" * 32 for i in range(0xA0, 0xA0 + FINDINGS_LIMIT + 5)]  # ids nobody has


def seal(home: Path, *batches: list[str], private: int = 0) -> dict[str, Any]:
    """Seal one ledger block per batch of committed ids; ``private`` private facts in the last."""
    settings = quiet_settings(home)
    with Node.init(settings, mind_name="Family", device_name="laptop") as node:
        node.auto_embed = False
        ledger = Ledger(node.genesis, store=SqlLedgerStore(node.store.db))
        fact = node.remember("the boiler service is on 3 June").block
        secrets = [node.remember(f"private {i}", scope="private").block.id for i in range(private)]
        hashes = []
        for i, ids in enumerate(batches):
            ids = [
                *ids,
                *([fact.id] if i == 0 else []),
                *(secrets if i == len(batches) - 1 else []),
            ]
            ledger.add_records([commit_record(x) for x in ids])
            block = ledger.propose(node.keys, node.genesis.created + 5_000 * (i + 1))
            assert block is not None and len(block.records) == len(ids)
            hashes.append(block.hash)
    return {"settings": settings, "fact": fact.id, "secrets": secrets, "hashes": hashes}


def verify_api(home: Path) -> dict[str, Any]:
    settings = quiet_settings(home)
    with ApiClient(create_app(settings), settings) as api:
        response = api.get("/api/v1/ledger/verify")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
    return data


def verify_cli(home: Path) -> tuple[int, dict[str, Any]]:
    run = run_kiana(home, "ledger", "verify", "--json")
    return run.returncode, json.loads(run.stdout)


def without_counts(data: dict[str, Any]) -> dict[str, Any]:
    commits = {k: v for k, v in data["commits"].items() if not k.endswith("_count")}
    return {**data, "commits": commits}


def test_a_committed_block_absent_here_is_a_warning_in_the_api(tmp_path: Path) -> None:
    made = seal(tmp_path, [], ABSENT[:2])
    data = verify_api(tmp_path)
    assert data["ok"] is True and data["chain_ok"] is True  # warnings are not errors
    assert data["height"] == 2 and data["first_bad_height"] is None and data["code"] is None
    commits = data["commits"]
    assert commits["checked"] == 3  # the boiler fact (here) and the two absent ids
    assert commits["error_count"] == 0 and commits["errors"] == []
    assert commits["warning_count"] == 2
    assert [(w["code"], w["height"]) for w in commits["warnings"]] == [("commit_absent", 2)] * 2
    messages = " ".join(w["message"] for w in commits["warnings"])
    assert ABSENT[0][:12] in messages and ABSENT[1][:12] in messages
    assert made["fact"][:12] not in messages
    assert all(len(w["record"]) == 64 for w in commits["warnings"])
    # one core function: the CLI's JSON is the same, less the counts the API adds
    code, cli = verify_cli(tmp_path)
    assert code == 0 and without_counts(data) == cli


def test_a_private_id_on_the_chain_is_an_error_and_the_list_is_bounded(tmp_path: Path) -> None:
    many = ABSENT[: FINDINGS_LIMIT + 5]
    made = seal(tmp_path, many, private=1)
    data = verify_api(tmp_path)
    assert data["chain_ok"] is True and data["ok"] is False  # the chain is fine, a commit is not
    commits = data["commits"]
    assert commits["checked"] == len(many) + 2
    assert commits["error_count"] == 1
    [error] = commits["errors"]
    assert error["code"] == "private_id_in_ledger" and error["height"] == 1
    assert made["secrets"][0][:12] in error["message"]
    assert commits["warning_count"] == len(many)
    assert len(commits["warnings"]) == FINDINGS_LIMIT  # bounded; the count is whole
    code, cli = verify_cli(tmp_path)
    assert code == 1  # the CLI fails on errors, and lists every finding
    assert len(cli["commits"]["warnings"]) == len(many)
    assert cli["commits"]["warnings"][:FINDINGS_LIMIT] == commits["warnings"]
    assert cli["commits"]["errors"] == commits["errors"]


def test_a_rewritten_block_is_the_first_bad_link_and_stops_the_commit_check(
    tmp_path: Path,
) -> None:
    made = seal(tmp_path, [], ABSENT[:1], ABSENT[1:2])
    with Node.open(made["settings"]) as node:

        def tamper(c):  # type: ignore[no-untyped-def]
            row = c.one("SELECT data FROM ledger_blocks WHERE hash = ?", (made["hashes"][1],))
            data = json.loads(row[0])
            data["time"] += 1  # the signature no longer matches
            c.execute(
                "UPDATE ledger_blocks SET data = ? WHERE hash = ?",
                (json.dumps(data), made["hashes"][1]),
            )

        node.store.db.write(tamper)
    data = verify_api(tmp_path)
    assert data["ok"] is False and data["chain_ok"] is False
    assert data["height"] == 1 and data["first_bad_height"] == 2 and data["code"]
    assert data["reason"]
    # only the verified part (block 1: the boiler fact, here) is checked
    assert data["commits"]["checked"] == 1 and data["commits"]["warning_count"] == 0
    code, cli = verify_cli(tmp_path)
    assert code == 1 and without_counts(data) == cli
