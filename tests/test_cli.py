"""The ``kiana`` command line, driven for real.

Most tests call the click group in-process with ``CliRunner`` against a real
home in ``tmp_path``; the ``subprocess`` tests start the installed command to
check real exit codes and that failures are one line on stderr.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from helpers_cli import (
    KIANA_ENV,
    copy_identity,
    open_node,
    run_kiana,
    strip_ansi,
)
from kiana.blocks import Block, make_block
from kiana.cli.main import cli
from kiana.config import SETTINGS
from kiana.identity import DeviceKeys
from kiana.transfer import export_lines

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_kiana_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own KIANA_* settings must not leak into these tests."""
    for name in (*KIANA_ENV, "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)


def kiana(
    home: Path | None, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Invoke the CLI in-process. An uncaught exception (a traceback for the user) fails the test."""
    argv = ["--home", str(home), *args] if home is not None else list(args)
    # a fixed, wide terminal so that tables never wrap the text the tests look for
    result = CliRunner().invoke(cli, argv, input=stdin, env={"COLUMNS": "200", **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"kiana {' '.join(args)} raised instead of reporting an error"
        ) from result.exception
    return result


def ok_json(home: Path, *args: str, stdin: str | None = None) -> Any:
    result = kiana(home, *args, "--json", stdin=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stderr_of(result: Result) -> str:
    return strip_ansi(result.stderr)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    result = kiana(path, "init", "--name", "Test mind", "--device-name", "laptop")
    assert result.exit_code == 0, result.output
    return path


def remember(home: Path, text: str, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = ok_json(home, "remember", text, *args)
    return data["block"]


def db_rows(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(home / "kiana.db")) as conn:
        return conn.execute(sql, params).fetchall()


def db_write(home: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(home / "kiana.db")) as conn, conn:
        conn.execute(sql, params)


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def block_line(block: Block) -> str:
    return line({"type": "block", "record": block.to_dict()})


def export_head(home: Path) -> list[str]:
    """The header and genesis lines of an export of ``home``."""
    with open_node(home) as node:
        lines = export_lines(node)
        return [next(lines), next(lines)]


# -- init --------------------------------------------------------------------


def test_init_creates_private_keys_and_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    info = ok_json(home, "init", "--name", "Family", "--device-name", "laptop")
    assert info["home"] == str(home)
    assert info["mind"].startswith("mind-")
    assert info["token_file"] == str(home / "api-token")

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(home / "keys" / "device.json") == 0o600
    assert mode(home / "keys") == 0o700
    assert mode(home / "api-token") == 0o600
    assert mode(home) == 0o700
    assert len((home / "api-token").read_text().strip()) >= 32

    status = ok_json(home, "status")
    assert status["mind"] == {
        "id": info["mind"],
        "name": "Family",
        "created": status["mind"]["created"],
    }
    assert status["device"] == {"id": info["device"], "name": "laptop"}
    assert status["blocks"]["total"] == 0


def test_reinit_is_refused_and_overwrites_nothing(home: Path) -> None:
    files = ["keys/device.json", "mind.json", "api-token", "config.toml"]
    before = {name: (home / name).read_bytes() for name in files}
    mind = ok_json(home, "status")["mind"]["id"]

    result = kiana(home, "init", "--name", "Another mind")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "already holds a KI_ana mind" in stderr_of(result)
    assert {name: (home / name).read_bytes() for name in files} == before
    assert ok_json(home, "status")["mind"]["id"] == mind


def test_init_text_output_and_kiana_home_env(tmp_path: Path) -> None:
    env_home, flag_home = tmp_path / "from-env", tmp_path / "from-flag"
    result = kiana(None, "init", "--name", "Env mind", env={"KIANA_HOME": str(env_home)})
    assert result.exit_code == 0, result.output
    out = strip_ansi(result.stdout)
    assert "Created mind Env mind" in out and str(env_home) in out
    assert "API token: " + str(env_home / "api-token") in out
    assert (env_home / "mind.json").exists()

    # --home wins over KIANA_HOME
    result = kiana(None, "--home", str(flag_home), "init", env={"KIANA_HOME": str(env_home)})
    assert result.exit_code == 0, result.output
    assert (flag_home / "mind.json").exists()


BEFORE_INIT = [
    ["remember", "something"],
    ["add", "notes.md"],
    ["search", "something"],
    ["blocks", "list"],
    ["blocks", "show", "abcdef"],
    ["blocks", "verify"],
    ["forget", "abcdef", "--yes"],
    ["export"],
    ["import", "export.jsonl"],
    ["status"],
    ["serve"],
]


@pytest.mark.parametrize("args", BEFORE_INIT, ids=lambda a: "-".join(a[:2]))
def test_commands_before_init_say_run_init(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "nowhere"
    result = kiana(home, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    err = stderr_of(result)
    assert "run 'kiana init' first" in err
    assert len(err.strip().splitlines()) == 1
    assert not home.exists()  # nothing was created on the way


# -- remember ----------------------------------------------------------------


def test_remember_stores_signed_fact_and_detects_duplicates(home: Path) -> None:
    device = ok_json(home, "status")["device"]["id"]
    first = ok_json(home, "remember", "The boiler service is on 3 June", "-t", "home", "--tag", "b")
    block = first["block"]
    assert first["created"] is True
    assert block["body"] == "The boiler service is on 3 June"
    assert (block["kind"], block["scope"], block["author"]) == ("fact", "shared", device)
    assert block["meta"]["tags"] == ["b", "home"]
    assert len(block["id"]) == 64 and len(block["sig"]) == 128

    again = ok_json(home, "remember", "The", "boiler service is on 3 June", "-t", "home")
    assert again == {"created": False, "block": block}

    text = kiana(home, "remember", "The boiler service is on 3 June")
    assert text.exit_code == 0
    assert strip_ansi(text.stdout).strip() == f"Already remembered as {block['id'][:12]}"
    new = kiana(home, "remember", "The chimney sweep comes in May")
    assert new.exit_code == 0
    assert strip_ansi(new.stdout).startswith("Remembered ")
    assert "(fact, shared)" in new.stdout
    assert ok_json(home, "status")["blocks"]["total"] == 2


def test_remember_private_note_with_title_and_lang(home: Path) -> None:
    shared = remember(home, "Shared shopping list: milk")
    private = remember(
        home,
        "My PIN hint is the cat's birthday",
        "--scope",
        "private",
        "--kind",
        "note",
        "--title",
        "PIN",
        "--lang",
        "en",
    )
    assert (private["kind"], private["scope"]) == ("note", "private")
    assert private["meta"] == {"title": "PIN", "lang": "en"}
    listed = ok_json(home, "blocks", "list", "--scope", "private")
    assert [b["id"] for b in listed["items"]] == [private["id"]]
    listed = ok_json(home, "blocks", "list", "--scope", "shared")
    assert [b["id"] for b in listed["items"]] == [shared["id"]]


def test_remember_supersedes_by_prefix(home: Path) -> None:
    old = remember(home, "Dekra inspection on 12 June")
    new = remember(home, "Dekra inspection moved to 19 June", "--supersedes", old["id"][:8])
    assert new["refs"] == [{"rel": "supersedes", "id": old["id"]}]

    missing = kiana(home, "remember", "x", "--supersedes", "0000000000")
    assert missing.exit_code == 4
    assert "no block with id starting 0000000000" in stderr_of(missing)
    bad = kiana(home, "remember", "x", "--supersedes", "not-hex")
    assert bad.exit_code == 1
    assert "hex" in stderr_of(bad)


def test_remember_rejects_empty_text(home: Path) -> None:
    result = kiana(home, "remember", "   ")
    assert result.exit_code == 1
    assert "nothing to remember" in stderr_of(result)
    assert ok_json(home, "status")["blocks"]["total"] == 0


# -- add ---------------------------------------------------------------------


def write_notes(folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    a = folder / "garden.md"
    a.write_text(
        "# Garden\n\nThe lemon tree goes to the cellar before the first frost.\n\n"
        "# Pond\n\nClean the pump filter every spring.\n",
        encoding="utf-8",
    )
    b = folder / "car.md"
    b.write_text("# Car\n\nWinter tyres go on in October.\n", encoding="utf-8")
    c = folder / "plain.txt"
    c.write_text(
        "\ufeffA plain text note with a byte order mark about the bicycle.\n", encoding="utf-8"
    )
    return [a, b, c]


def test_add_markdown_files_and_skip_unchanged(home: Path, tmp_path: Path) -> None:
    files = write_notes(tmp_path / "notes")
    result = kiana(home, "add", *map(str, files), "--tag", "docs")
    assert result.exit_code == 0, result.output
    # non-tty: no progress bar, just the summary line
    assert result.stdout == "Added 3 file(s): 4 new chunk(s), 0 unchanged\n"
    assert result.stderr == ""

    chunks = ok_json(home, "blocks", "list", "--kind", "chunk", "--tag", "docs")["items"]
    assert sorted(c["meta"]["title"] for c in chunks) == ["Car", "Garden", "Pond", "plain.txt"]
    assert {c["meta"]["source"] for c in chunks} == {str(f.resolve()) for f in files}
    bicycle = next(c for c in chunks if c["meta"]["title"] == "plain.txt")
    assert not bicycle["body"].startswith("\ufeff")

    again = ok_json(home, "add", *map(str, files), "--tag", "docs")
    assert again == {"files": 3, "chunks_stored": 0, "chunks_skipped": 4, "errors": []}
    assert ok_json(home, "status")["blocks"]["total"] == 4

    # changing one section stores only that section again
    files[0].write_text(
        files[0].read_text().replace("every spring", "every spring and autumn"), encoding="utf-8"
    )
    changed = ok_json(home, "add", str(files[0]))
    assert (changed["chunks_stored"], changed["chunks_skipped"]) == (1, 1)


def test_add_reports_unusable_files_and_still_adds_good_ones(home: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.md"
    good.write_text("# Wifi\n\nThe guest network password is on the fridge.\n")
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" * 20)
    latin1 = tmp_path / "old.txt"
    latin1.write_bytes("Grüße aus Köln".encode("latin-1"))
    missing = tmp_path / "missing.md"
    folder = tmp_path / "folder"
    folder.mkdir()

    result = kiana(home, "add", str(binary), str(good), str(latin1), str(missing), str(folder))

    assert result.exit_code == 1
    assert result.stdout == "Added 1 file(s): 1 new chunk(s), 0 unchanged\n"
    err = stderr_of(result).splitlines()
    assert len(err) == 4
    assert err[0].startswith(f"skipped {binary}:") and "binary" in err[0]
    assert err[1].startswith(f"skipped {latin1}:") and "not UTF-8" in err[1]
    assert err[2].startswith(f"skipped {missing}:") and "does not exist" in err[2]
    assert err[3].startswith(f"skipped {folder}:") and "directory" in err[3]
    hits = ok_json(home, "search", "guest", "password")
    assert [h["block"]["meta"]["source"] for h in hits] == [str(good.resolve())]

    as_json = kiana(home, "add", str(good), str(missing), "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["files"] == 1 and report["chunks_skipped"] == 1
    assert report["errors"] == [{"path": str(missing), "message": f"{missing} does not exist"}]


# -- search ------------------------------------------------------------------


def test_search_finds_best_matches_first(home: Path) -> None:
    boiler = remember(home, "The boiler service is on 3 June", "-t", "house")
    remember(home, "Buy a new garden hose")
    remember(home, "The boiler boiler makes noise when the boiler heats", "--kind", "note")

    hits = ok_json(home, "search", "boiler")
    assert len(hits) == 2
    assert hits[0]["score"] >= hits[1]["score"] > 0
    assert all("boiler" in h["block"]["body"] for h in hits)

    # prefix matching for words of four letters or more, and filters
    assert [h["block"]["id"] for h in ok_json(home, "search", "boil", "--kind", "fact")] == [
        boiler["id"]
    ]
    assert [h["block"]["id"] for h in ok_json(home, "search", "boiler", "--tag", "house")] == [
        boiler["id"]
    ]
    assert len(ok_json(home, "search", "boiler", "--limit", "1")) == 1
    assert ok_json(home, "search", "submarine") == []

    text = kiana(home, "search", "garden", "hose")
    assert text.exit_code == 0
    assert "Buy a new garden hose" in text.stdout
    none = kiana(home, "search", "submarine")
    assert none.exit_code == 0 and none.stdout.strip() == "No matches."


def test_search_without_words_is_a_clear_error(home: Path) -> None:
    result = kiana(home, "search", "!!!", "???")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert stderr_of(result).strip() == "error: the search query has no words in it"


# -- blocks list -------------------------------------------------------------


def test_blocks_list_filters(home: Path) -> None:
    fact = remember(home, "Fact about tea", "-t", "drinks")
    note = remember(home, "Note about coffee", "--kind", "note", "-t", "drinks", "-t", "hot")
    private = remember(home, "Private fact about cocoa", "--scope", "private")

    def ids(*args: str) -> list[str]:
        return [b["id"] for b in ok_json(home, "blocks", "list", *args)["items"]]

    assert set(ids()) == {fact["id"], note["id"], private["id"]}
    assert set(ids("--kind", "fact")) == {fact["id"], private["id"]}
    assert ids("--kind", "note") == [note["id"]]
    assert set(ids("--tag", "drinks")) == {fact["id"], note["id"]}
    assert ids("--tag", "hot") == [note["id"]]
    assert ids("--scope", "private", "--kind", "fact") == [private["id"]]
    assert ids("--author", fact["author"], "--tag", "hot") == [note["id"]]
    assert ids("--author", "aaaa-bbbb-cccc-dddd") == []
    assert ids("--kind", "summary") == []

    bad = kiana(home, "blocks", "list", "--kind", "gossip")
    assert bad.exit_code == 2
    assert "gossip" in stderr_of(bad)


def test_blocks_list_paginates_with_cursor(home: Path) -> None:
    made = [remember(home, f"Numbered fact {i}")["id"] for i in range(7)]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        args = ["blocks", "list", "--limit", "3"] + (["--cursor", cursor] if cursor else [])
        page = ok_json(home, *args)
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(b["id"] for b in seen) == sorted(made)  # every block exactly once
    created = [b["created"] for b in seen]
    assert created == sorted(created, reverse=True)  # newest first

    text = kiana(home, "blocks", "list", "-n", "3")
    assert text.exit_code == 0
    more = [ln for ln in strip_ansi(text.stdout).splitlines() if ln.startswith("more: ")]
    assert len(more) == 1 and more[0].startswith("more: kiana blocks list --cursor ")

    bad = kiana(home, "blocks", "list", "--cursor", "garbage")
    assert bad.exit_code == 1 and "invalid page cursor" in stderr_of(bad)
    assert kiana(home, "blocks", "list", "--limit", "0").exit_code == 2


def local_ms(year: int, month: int, day: int, hour: int, minute: int) -> int:
    """Milliseconds of a local wall-clock time, as the CLI reads --since/--until."""
    return int(datetime(year, month, day, hour, minute).astimezone().timestamp() * 1000)


def test_blocks_list_since_until(home: Path, tmp_path: Path) -> None:
    with open_node(home) as node:
        dated = {
            year: make_block(
                node.keys.signing,
                node.device_id,
                kind="note",
                body=f"A note written in {year}",
                created=local_ms(year, 6, 15, 12, 0),
            )
            for year in (2019, 2021, 2023)
        }
    export = tmp_path / "dated.jsonl"
    export.write_text("\n".join([*export_head(home), *map(block_line, dated.values())]) + "\n")
    assert ok_json(home, "import", str(export))["stored"] == 3

    def years(*args: str) -> list[int]:
        items = ok_json(home, "blocks", "list", *args)["items"]
        return [int(b["body"].rsplit(" ", 1)[1]) for b in items]

    assert years() == [2023, 2021, 2019]
    assert years("--since", "2020-01-01") == [2023, 2021]
    assert years("--until", "2020-01-01") == [2019]
    assert years("--since", "2020-01-01", "--until", "2022-01-01") == [2021]
    # --since is inclusive, --until exclusive, to the minute
    assert years("--since", "2021-06-15T12:00", "--until", "2021-06-15T12:01") == [2021]
    assert years("--until", "2021-06-15T12:00", "--since", "2021-01-01") == []

    for flag in ("--since", "--until"):
        bad = kiana(home, "blocks", "list", flag, "15/06/2021")
        assert bad.exit_code == 1
        assert stderr_of(bad).strip() == (
            "error: '15/06/2021' is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        )


# -- blocks show / verify ------------------------------------------------------


def test_blocks_show_by_prefix(home: Path) -> None:
    block = remember(home, "The spare key is under the blue pot", "-t", "house", "--title", "Key")
    shown = ok_json(home, "blocks", "show", block["id"][:7])
    assert shown["block"] == block
    prov = shown["provenance"]
    assert prov["valid"] is True and prov["error"] == ""
    assert (prov["author_name"], prov["author_role"]) == ("laptop", "authority")

    text = kiana(home, "blocks", "show", block["id"][:10])
    assert text.exit_code == 0
    out = strip_ansi(text.stdout)
    assert block["id"] in out
    assert "The spare key is under the blue pot" in out
    assert "valid" in out and "INVALID" not in out
    assert "laptop" in out

    missing = kiana(home, "blocks", "show", "0" * 16)
    assert missing.exit_code == 4
    assert stderr_of(missing).strip() == "error: no block with id starting 0000000000000000"


def test_blocks_verify_detects_tampering_in_the_database(home: Path) -> None:
    blocks = [remember(home, f"Verified fact number {i}") for i in range(4)]
    assert ok_json(home, "blocks", "verify") == {"checked": 4, "ok": True, "failures": []}
    text = kiana(home, "blocks", "verify")
    assert text.exit_code == 0
    assert strip_ansi(text.stdout).strip() == "Checked 4 block(s): 0 failure(s)"
    one = kiana(home, "blocks", "verify", blocks[0]["id"][:8])
    assert one.exit_code == 0
    assert "valid, signed by laptop" in strip_ansi(one.stdout)

    # an attacker with write access to the database changes a body and a signature
    body_victim, sig_victim = blocks[1], blocks[2]
    db_write(
        home, "UPDATE blocks SET body = 'Transfer all money' WHERE id = ?", (body_victim["id"],)
    )
    forged = ("0" if sig_victim["sig"][0] != "0" else "1") + sig_victim["sig"][1:]
    db_write(home, "UPDATE blocks SET sig = ? WHERE id = ?", (forged, sig_victim["id"]))

    result = kiana(home, "blocks", "verify")
    assert result.exit_code == 3
    assert strip_ansi(result.stdout).strip() == "Checked 4 block(s): 2 failure(s)"
    err = stderr_of(result)
    assert f"{body_victim['id'][:12]} id_mismatch" in err
    assert f"{sig_victim['id'][:12]} bad_signature" in err

    report = json.loads(kiana(home, "blocks", "verify", "--json").stdout)
    assert report["checked"] == 4 and report["ok"] is False
    assert {(f["id"], f["code"]) for f in report["failures"]} == {
        (body_victim["id"], "id_mismatch"),
        (sig_victim["id"], "bad_signature"),
    }

    single = kiana(home, "blocks", "verify", body_victim["id"][:8])
    assert single.exit_code == 3
    assert "INVALID (id_mismatch)" in strip_ansi(single.stdout)
    single = kiana(home, "blocks", "verify", sig_victim["id"], "--json")
    assert single.exit_code == 3
    assert json.loads(single.stdout)["error"] == "bad_signature"
    assert kiana(home, "blocks", "verify", blocks[3]["id"]).exit_code == 0

    shown = ok_json(home, "blocks", "show", body_victim["id"])
    assert shown["provenance"]["valid"] is False
    assert "INVALID (id_mismatch)" in strip_ansi(
        kiana(home, "blocks", "show", body_victim["id"]).stdout
    )


# -- forget ------------------------------------------------------------------


def test_forget_erases_content_for_good(home: Path) -> None:
    secret = remember(home, "The garage door code is 4711", "-t", "secret")
    keep = remember(home, "The garage is painted green")

    result = kiana(home, "forget", secret["id"][:10], "--yes", "--reason", "typo")
    assert result.exit_code == 0, result.output
    out = strip_ansi(result.stdout).strip()
    assert out.startswith(f"Erased {secret['id'][:12]}; tombstone ")

    assert [h["block"]["id"] for h in ok_json(home, "search", "garage")] == [keep["id"]]
    assert ok_json(home, "search", "4711") == []
    assert ok_json(home, "blocks", "list", "--tag", "secret")["items"] == []
    shown = kiana(home, "blocks", "show", secret["id"][:10])
    assert shown.exit_code == 1
    assert "tombstone" in stderr_of(shown)
    assert shown.stdout == ""

    # the content is gone from the database file itself, not just hidden
    assert db_rows(home, "SELECT body, erased FROM blocks WHERE id = ?", (secret["id"],)) == [
        ("", 1)
    ]
    assert db_rows(home, "SELECT COUNT(*) FROM blocks WHERE body LIKE '%4711%'") == [(0,)]
    status = ok_json(home, "status")["blocks"]
    assert (status["total"], status["erased"], status["tombstones"]) == (1, 1, 1)

    exported = kiana(home, "export")
    assert exported.exit_code == 0
    assert "4711" not in exported.stdout
    tombs = [json.loads(x) for x in exported.stdout.splitlines()]
    tombs = [r["record"] for r in tombs if r["type"] == "tombstone"]
    assert [(t["erases"], t["reason"]) for t in tombs] == [(secret["id"], "typo")]

    # forgetting again is idempotent and returns the same tombstone
    again = ok_json(home, "forget", secret["id"], "--yes")
    assert again == tombs[0]
    assert kiana(home, "forget", "0" * 12, "--yes").exit_code == 4


# -- export / import -------------------------------------------------------------


def fill(home: Path, tmp_path: Path) -> dict[str, Any]:
    """Some facts, a file and an erased block; returns the block ids by role."""
    facts = [remember(home, f"Family fact {i}: birthday in month {i + 1}")["id"] for i in range(3)]
    notes = tmp_path / "notes"
    kiana(home, "add", *map(str, write_notes(notes)))
    gone = remember(home, "Erase me, I was a mistake")["id"]
    assert kiana(home, "forget", gone, "--yes").exit_code == 0
    return {"facts": facts, "gone": gone, "live": ok_json(home, "status")["blocks"]["total"]}


def test_export_import_round_trip_is_idempotent(home: Path, tmp_path: Path) -> None:
    data = fill(home, tmp_path)
    assert data["live"] == 7
    target = tmp_path / "mind.jsonl"
    result = kiana(home, "export", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert stderr_of(result).strip() == f"Exported 8 record(s) to {target}"
    records = [json.loads(x) for x in target.read_text().splitlines()]
    assert [r["type"] for r in records[:2]] == ["kiana-export", "genesis"]
    assert [r["type"] for r in records[2:]].count("block") == 7
    assert [r["type"] for r in records[2:]].count("tombstone") == 1
    assert not (tmp_path / "mind.jsonl.part").exists()

    # stdout export has the same records (only the export time may differ)
    streamed = [json.loads(x) for x in kiana(home, "export").stdout.splitlines()]
    assert streamed[1:] == records[1:]

    before = ok_json(home, "status")["blocks"]
    report = ok_json(home, "import", str(target))
    assert report == {
        "stored": 0,
        "duplicates": 7,
        "refused_erased": 0,
        "tombstones": 1,
        "errors": [],
    }
    assert ok_json(home, "status")["blocks"] == before

    text = kiana(home, "import", str(target))
    assert text.exit_code == 0
    assert strip_ansi(text.stdout).strip() == (
        "Imported 0 new block(s), 7 already present, 1 tombstone(s), 0 refused as erased"
    )
    assert text.stderr == ""


def test_import_restores_a_copy_of_the_same_mind(home: Path, tmp_path: Path) -> None:
    data = fill(home, tmp_path)
    target = tmp_path / "mind.jsonl"
    assert kiana(home, "export", "-o", str(target)).exit_code == 0

    restored = tmp_path / "restored"
    copy_identity(home, restored)
    # from standard input this time
    report = ok_json(restored, "import", "-", stdin=target.read_text())
    assert (report["stored"], report["tombstones"], report["errors"]) == (7, 1, [])
    mine, theirs = ok_json(restored, "status")["blocks"], ok_json(home, "status")["blocks"]
    for key in ("total", "by_kind", "by_scope", "tombstones"):
        assert mine[key] == theirs[key]
    assert ok_json(restored, "blocks", "verify")["checked"] == 7
    assert len(ok_json(restored, "search", "birthday")) == 3
    # the erased block's content cannot come back
    assert kiana(restored, "blocks", "show", data["gone"]).exit_code == 1


def test_import_from_another_mind_is_refused(home: Path, tmp_path: Path) -> None:
    fill(home, tmp_path)
    target = tmp_path / "mind.jsonl"
    assert kiana(home, "export", "-o", str(target)).exit_code == 0
    stranger = tmp_path / "stranger"
    assert kiana(stranger, "init", "--name", "Someone else").exit_code == 0

    result = kiana(stranger, "import", str(target))

    # The header already shows nothing can verify here: one clear error, no per-line noise.
    assert result.exit_code == 1
    err = stderr_of(result).splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: this export is from another mind")
    assert "Join that mind" in err[0]
    assert ok_json(stranger, "status")["blocks"]["total"] == 0


def test_import_reports_bad_lines_and_keeps_good_ones(home: Path, tmp_path: Path) -> None:
    with open_node(home) as node:
        good_a = node.new_block(body="Imported good block A")
        good_b = node.new_block(body="Imported good block B")
        truncated = block_line(node.new_block(body="This line gets cut off"))
        # signed by a stranger's key but claiming to be from this device
        forged = make_block(
            DeviceKeys.generate().signing,
            node.device_id,
            kind="fact",
            body="Forged: the owner wants to give the car away",
            created=good_a.created,
        )
        widget = node.new_block(body="A block of a kind from the future").to_dict()
        widget["kind"] = "widget"
        huge = make_block(
            node.keys.signing,
            node.device_id,
            kind="note",
            body="x" * (node.settings.max_body_bytes + 1),
            created=good_a.created,
            max_body=2 * node.settings.max_body_bytes,
        )
    lines = [
        *export_head(home),
        block_line(good_a),  # 3
        block_line(forged),  # 4
        truncated[: len(truncated) // 2],  # 5
        "this is not JSON",  # 6
        line({"type": "block", "record": widget}),  # 7
        block_line(huge),  # 8
        line({"type": "gadget", "record": {}}),  # 9
        "",  # 10: blank lines are ignored
        block_line(good_b),  # 11
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")

    report = json.loads(kiana(home, "import", str(source), "--json").stdout)
    assert (report["stored"], report["duplicates"]) == (2, 0)
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (4, "bad_signature"),
        (5, "malformed_block"),
        (6, "malformed_block"),
        (7, "unknown_kind"),
        (8, "block_too_large"),
        (9, "invalid_block"),
    ]
    assert "not valid JSON" in report["errors"][1]["message"]
    assert "widget" in report["errors"][3]["message"]
    ids = {b["id"] for b in ok_json(home, "blocks", "list")["items"]}
    assert ids == {good_a.id, good_b.id}
    assert ok_json(home, "search", "forged") == []

    text = kiana(home, "import", str(source))
    assert text.exit_code == 3
    assert strip_ansi(text.stdout).strip() == (
        "Imported 0 new block(s), 2 already present, 0 tombstone(s), 0 refused as erased"
    )
    err = stderr_of(text).splitlines()
    assert [ln.split(":")[0] for ln in err] == [
        "line 4 bad_signature",
        "line 5 malformed_block",
        "line 6 malformed_block",
        "line 7 unknown_kind",
        "line 8 block_too_large",
        "line 9 invalid_block",
    ]


def test_export_to_an_unwritable_place_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    remember(home, "Something to export")
    target = tmp_path / "no" / "such" / "dir" / "mind.jsonl"
    result = kiana(home, "export", "--output", str(target))
    assert result.exit_code == 1
    assert stderr_of(result).strip() == f"error: cannot write {target}: No such file or directory"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = kiana(home, "export", "-o", str(blocker / "mind.jsonl"))
    assert result.exit_code == 1
    assert stderr_of(result).startswith(f"error: cannot write {blocker / 'mind.jsonl'}: ")
    # an existing export is only replaced by a complete one
    good = tmp_path / "mind.jsonl"
    assert kiana(home, "export", "-o", str(good)).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "home", "mind.jsonl"]


def test_import_of_missing_file_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    result = kiana(home, "import", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1
    assert stderr_of(result).strip() == (
        f"error: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory"
    )


# -- status and config ----------------------------------------------------------


def test_status_json(home: Path, tmp_path: Path) -> None:
    fill(home, tmp_path)
    remember(home, "A private thought", "--scope", "private", "--kind", "note")
    status = ok_json(home, "status")
    assert status["mind"]["name"] == "Test mind"
    assert status["device"]["name"] == "laptop"
    assert status["storage"]["backend"] == "sqlite"
    assert status["storage"]["location"] == f"sqlite:///{home / 'kiana.db'}"
    assert status["storage"]["schema_version"] >= 1
    assert status["blocks"] == {
        "total": 8,
        "by_kind": {"chunk": 4, "fact": 3, "note": 1},
        "by_scope": {"private": 1, "shared": 7},
        "erased": 1,
        "tombstones": 1,
    }
    assert status["devices"] == 1

    text = kiana(home, "status")
    assert text.exit_code == 0
    out = strip_ansi(text.stdout)
    assert f"Test mind ({status['mind']['id']})" in out
    assert "8 (chunk 4, fact 3, note 1)" in out


def settings_by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["setting"]: row for row in data["settings"]}


def test_config_show_values_and_sources(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # works before init: it only reads configuration
    data = ok_json(home, "config", "show")
    assert data["home"] == str(home) and data["config_file"] == str(home / "config.toml")
    rows = settings_by_name(data)
    assert list(rows) == [f"{s.section}.{s.key}" for s in SETTINGS]
    for spec in SETTINGS:
        row = rows[f"{spec.section}.{spec.key}"]
        assert (row["value"], row["source"], row["env"]) == (spec.default, "default", spec.env)

    assert kiana(home, "init").exit_code == 0
    text = (home / "config.toml").read_text()
    # the generated file lists every setting, commented out
    for spec in SETTINGS:
        assert f"# {spec.key} = " in text
    edited = text.replace("# chunk_chars = 1200", "chunk_chars = 500")
    edited = edited.replace('# level = "warning"', 'level = "info"')
    assert edited.count("\nchunk_chars = 500\n") == 1 and edited.count('\nlevel = "info"\n') == 1
    (home / "config.toml").write_text(edited)
    env = {
        "KIANA_LOG_LEVEL": "debug",
        "KIANA_API_PORT": "9999",
        "KIANA_DATABASE_URL": "postgresql://kiana:s3cret@db.example/kiana",
    }
    result = kiana(home, "config", "show", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout
    rows = settings_by_name(json.loads(result.stdout))
    assert (rows["ingest.chunk_chars"]["value"], rows["ingest.chunk_chars"]["source"]) == (
        500,
        "file",
    )
    assert (rows["logging.level"]["value"], rows["logging.level"]["source"]) == ("debug", "env")
    assert (rows["api.port"]["value"], rows["api.port"]["source"]) == (9999, "env")
    assert rows["storage.database_url"] == {
        "setting": "storage.database_url",
        "value": "postgresql://kiana:***@db.example/kiana",
        "source": "env",
        "env": "KIANA_DATABASE_URL",
    }
    assert rows["api.host"]["source"] == "default"

    table = kiana(home, "config", "show", env=env)
    assert table.exit_code == 0
    out = strip_ansi(table.stdout)
    assert "s3cret" not in out
    assert "ingest.chunk_chars" in out and "KIANA_CHUNK_CHARS" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[storage\n", "is not valid TOML"),
        ("[ingest]\nchunk_size = 10\n", "unknown setting 'chunk_size' in [ingest]"),
        ("[gui]\ntheme = 'dark'\n", "unknown section [gui]"),
        ("[api]\nport = 'eighty'\n", "'api.port' must be a int"),
        ("[ingest]\nchunk_chars = 5\n", "ingest.chunk_chars must be between 200 and 100000"),
    ],
)
def test_invalid_config_is_a_one_line_error(home: Path, content: str, message: str) -> None:
    (home / "config.toml").write_text(content)
    for args in (["config", "show"], ["status"], ["remember", "x"]):
        result = kiana(home, *args)
        assert result.exit_code == 2
        assert result.stdout == ""
        err = stderr_of(result).strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert message in err[0]


def test_invalid_environment_value_is_a_config_error(home: Path) -> None:
    result = kiana(home, "status", env={"KIANA_API_REQUIRE_TOKEN": "maybe"})
    assert result.exit_code == 2
    assert "KIANA_API_REQUIRE_TOKEN" in stderr_of(result)


def test_serve_refuses_unsafe_binding_before_announcing(home: Path) -> None:
    result = kiana(home, "serve", "--host", "0.0.0.0", env={"KIANA_API_REQUIRE_TOKEN": "false"})
    assert result.exit_code == 2
    err = stderr_of(result).strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to serve on 0.0.0.0")
    (home / "api-token").unlink()
    result = kiana(home, "serve")
    assert result.exit_code == 2
    assert stderr_of(result).strip() == (
        f"error: no API token at {home / 'api-token'}; run 'kiana init' first"
    )


# -- the real executable -------------------------------------------------------


def test_installed_command_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def failing(rc: int, *args: str, env: dict[str, str] | None = None) -> str:
        proc = run_kiana(home, *args, env=env)
        assert proc.returncode == rc, (proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ")
        assert "\x1b[" not in proc.stderr  # no colour codes when stderr is not a terminal
        return lines[0]

    assert "run 'kiana init' first" in failing(2, "status")
    init = run_kiana(home, "init", "--name", "Subprocess mind", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["home"] == str(home)
    assert "already holds" in failing(2, "init")
    assert "no block with id" in failing(4, "blocks", "show", "0" * 12)
    assert "no words" in failing(1, "search", "...")
    assert "is not a date" in failing(1, "blocks", "list", "--since", "yesterday")
    assert "KIANA_API_PORT" in failing(2, "status", env={"KIANA_API_PORT": "http"})
    assert "must be between 1 and 65535" in failing(2, "status", env={"KIANA_API_PORT": "0"})

    remembered = run_kiana(home, "remember", "Subprocess fact", "--json")
    assert remembered.returncode == 0 and remembered.stderr == ""
    block_id = json.loads(remembered.stdout)["block"]["id"]
    db_write(home, "UPDATE blocks SET body = 'tampered' WHERE id = ?", (block_id,))
    verify = run_kiana(home, "blocks", "verify")
    assert verify.returncode == 3
    assert "Traceback" not in verify.stderr

    (home / "config.toml").write_text("this is = = not toml\n")
    assert "not valid TOML" in failing(2, "status")

    # a usage error is click's: exit 2, no traceback
    usage = run_kiana(home, "blocks", "list", "--limit", "many")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr and "--limit" in usage.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("kiana")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("kiana, version ")


def test_progress_bars_stay_out_of_piped_output(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_kiana(home, "init").returncode == 0
    notes = tmp_path / "notes"
    notes.mkdir()
    files = []
    for i in range(30):
        f = notes / f"note{i:02d}.md"
        f.write_text(f"# Note {i}\n\nSomething worth keeping, number {i}.\n")
        files.append(f)

    added = run_kiana(home, "add", *files)
    assert added.returncode == 0
    assert added.stdout == "Added 30 file(s): 30 new chunk(s), 0 unchanged\n"
    assert added.stderr == ""

    export = tmp_path / "out.jsonl"
    exported = run_kiana(home, "export", "--output", export)
    assert exported.returncode == 0 and exported.stdout == ""
    assert exported.stderr == f"Exported 30 record(s) to {export}\n"

    imported = run_kiana(home, "import", export)
    assert imported.returncode == 0
    assert imported.stdout == (
        "Imported 0 new block(s), 30 already present, 0 tombstone(s), 0 refused as erased\n"
    )
    assert imported.stderr == ""

    verified = run_kiana(home, "blocks", "verify")
    assert (verified.returncode, verified.stdout, verified.stderr) == (
        0,
        "Checked 30 block(s): 0 failure(s)\n",
        "",
    )

    listed = run_kiana(home, "blocks", "list", "--json", "--limit", "1000")
    assert listed.returncode == 0
    assert len(json.loads(listed.stdout)["items"]) == 30


# -- documentation -----------------------------------------------------------------


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield " ".join(path), command
        if isinstance(command, click.Group):
            yield from walk(command, path)


def docs_text(*names: str) -> str:
    parts = []
    for name in names:
        path = ROOT / name
        assert path.exists(), f"{name} is missing"
        parts.append(path.read_text(encoding="utf-8"))
    return "\n".join(parts)


def test_every_command_and_option_is_documented() -> None:
    text = docs_text("README.md", "docs/cli.md")
    commands = dict(walk(cli))
    assert {"init", "blocks list", "config show", "import"} <= set(commands)
    undocumented = [f"kiana {name}" for name in commands if f"kiana {name}" not in text]
    assert undocumented == [], "commands missing from README.md and docs/cli.md"

    reference = docs_text("docs/cli.md")
    missing = [
        f"kiana {name} {opt}"
        for name, command in [("", cli), *commands.items()]
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--") and opt not in reference
    ]
    assert missing == [], "options missing from docs/cli.md"


def test_every_setting_is_documented() -> None:
    text = docs_text("docs/configuration.md")
    missing = [
        f"{spec.section}.{spec.key} / {spec.env}"
        for spec in SETTINGS
        if f"{spec.section}.{spec.key}" not in text or spec.env not in text
    ]
    assert missing == [], "settings missing from docs/configuration.md"
    assert "KIANA_HOME" in text
