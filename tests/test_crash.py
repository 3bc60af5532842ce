"""Crash safety: ``kill -9`` in the middle of ``kiana import`` and ``kiana add``.

The import commits whole batches of ``kiana.transfer.BATCH`` blocks, and
``kiana add`` commits one file at a time, so a process killed at any moment
must leave an intact database holding only whole, verifying batches (files),
a consistent keyword index, and a state from which re-running the same
command completes the job without duplicates.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from helpers_cli import clean_env, copy_identity, count_rows, kiana_argv, open_node, run_kiana
from kiana.config import load_settings
from kiana.memory.chunking import chunk_text
from kiana.node import Node
from kiana.transfer import BATCH, export_lines

# Re-running a 20k-block import embeds every block (MiniLM on 2 cores): allow for a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

TOTAL = 20_000
FILES = 1_500
SECTIONS = 3


def body(i: int) -> str:
    return f"Block {i} of the crash test is about topic{i % 97} and carries marker m{i:05d}."


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A home with TOTAL blocks and its export: (home, export file, block ids in export order)."""
    root = tmp_path_factory.mktemp("crash-source")
    home = root / "home"
    with Node.init(load_settings(home=home, environ={}), mind_name="Crash test") as node:
        for start in range(0, TOTAL, 2_000):
            batch = [node.new_block(body=body(i)) for i in range(start, start + 2_000)]
            node.store.put_many(batch, verified=True)
        export = root / "export.jsonl"
        with open(export, "w", encoding="utf-8") as fh:
            for line in export_lines(node):
                fh.write(line + "\n")
    ids = [
        json.loads(line)["record"]["id"]
        for line in export.read_text(encoding="utf-8").splitlines()[2:]
    ]
    assert len(ids) == TOTAL
    return home, export, ids


def kill_midway(
    proc: subprocess.Popen[str], db: Path, total: int, *, at_least: int = 1, timeout: float = 90
) -> int:
    """SIGKILL ``proc`` once at least ``at_least`` but not all rows are committed.

    Returns the row count seen just before the kill.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"finished (exit {proc.returncode}) before it could be killed: {err}")
        seen = count_rows(db)
        if seen is not None and at_least <= seen < total:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            return seen
        time.sleep(0.005)
    proc.kill()
    proc.communicate()
    pytest.fail(f"fewer than {at_least} rows were committed in time")


def start(home: Path, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        kiana_argv(home, *args),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_database(db: Path) -> int:
    """The database survived: integrity, keyword index, no duplicate ids. Returns the row count."""
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # the full-text index is consistent with itself and with the blocks table
        conn.execute("INSERT INTO blocks_fts(blocks_fts, rank) VALUES('integrity-check', 1)")
        conn.commit()
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM blocks").fetchone()
        (indexed,) = conn.execute("SELECT COUNT(*) FROM blocks_fts_docsize").fetchone()
    count, distinct = rows
    assert count == distinct, "the same block was stored twice"
    assert indexed == count, "keyword index and blocks table disagree"
    return int(count)


def test_kill_during_import_leaves_whole_batches_and_rerun_completes(
    source: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    src_home, export, ids = source
    home = tmp_path / "copy"
    copy_identity(src_home, home)  # the same mind and device, no database yet
    db = home / "kiana.db"

    # crash twice: early in a fresh database, then later in a re-run of the same import
    kept = 0
    for at_least in (1, 5 * BATCH):
        seen = kill_midway(start(home, "import", export), db, TOTAL, at_least=kept + at_least)
        before, kept = kept, check_database(db)
        assert seen <= kept < TOTAL and kept > before
        assert kept % BATCH == 0, f"{kept} rows: a batch was half written"
        with closing(sqlite3.connect(db)) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM blocks")}
        # the committed batches are exactly the first ``kept`` blocks of the export
        assert stored == set(ids[:kept])
        with open_node(home) as node:
            report = node.verify_all()
        assert (report.checked, report.failures) == (kept, [])

    # search works on what was committed before the crash
    first = run_kiana(home, "search", "m00000", "--json")
    assert first.returncode == 0, first.stderr
    assert [h["block"]["body"] for h in json.loads(first.stdout)] == [body(0)]

    rerun = run_kiana(home, "import", export, "--json", timeout=110)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary == {
        "stored": TOTAL - kept,
        "duplicates": kept,
        "refused_erased": 0,
        "tombstones": 0,
        "errors": [],
    }
    assert check_database(db) == TOTAL
    with open_node(home) as node:
        assert node.store.stats().blocks == TOTAL
        last = node.search(f"m{TOTAL - 1:05d}")
        assert [h.block.body for h in last] == [body(TOTAL - 1)]


def write_documents(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for n in range(FILES):
        path = folder / f"doc{n:04d}.md"
        path.write_text(
            "".join(
                f"# Document {n} section {s}\n\nParagraph {s} of document {n}: "
                f"keyword d{n:04d}s{s} and some ordinary words about the house.\n\n"
                for s in range(SECTIONS)
            ),
            encoding="utf-8",
        )
        paths.append(path)
    return paths


def chunks_per_source(db: Path) -> Counter[str]:
    with closing(sqlite3.connect(db)) as conn:
        return Counter(r[0] for r in conn.execute("SELECT source FROM blocks"))


def test_kill_during_add_then_rerun_adds_each_chunk_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_kiana(home, "init").returncode == 0
    db = home / "kiana.db"
    paths = write_documents(tmp_path / "docs")
    chunk_chars = load_settings(home=home, environ={}).chunk_chars
    expected = {
        str(p.resolve()): len(chunk_text(p.read_text(encoding="utf-8"), target=chunk_chars))
        for p in paths
    }
    assert set(expected.values()) == {SECTIONS}
    total = sum(expected.values())

    kill_midway(start(home, "add", *paths), db, total)

    kept = check_database(db)
    assert 0 < kept < total
    # each file was committed whole or not at all
    partial = {src: n for src, n in chunks_per_source(db).items() if n != expected[src]}
    assert partial == {}
    with open_node(home) as node:
        report = node.verify_all()
    assert (report.checked, report.failures) == (kept, [])

    rerun = run_kiana(home, "add", *paths, "--json", timeout=110)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary == {
        "files": FILES,
        "chunks_stored": total - kept,
        "chunks_skipped": kept,
        "errors": [],
    }
    assert check_database(db) == total
    assert chunks_per_source(db) == Counter(expected)
    with closing(sqlite3.connect(db)) as conn:
        (distinct,) = conn.execute(
            "SELECT COUNT(DISTINCT source || body_hash) FROM blocks"
        ).fetchone()
    assert distinct == total
    hits = run_kiana(home, "search", f"d{FILES - 1:04d}s2", "--json")
    assert hits.returncode == 0
    assert len(json.loads(hits.stdout)) == 1
