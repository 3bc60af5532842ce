"""Helpers for the CLI, crash and zero-cloud tests: real homes, real processes.

Nothing here mocks anything: ``run_kiana`` starts the real command line in a
child process, ``open_node`` opens a real node on a home directory.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from kiana.config import SETTINGS, load_settings
from kiana.node import Node

KIANA_ENV = frozenset({spec.env for spec in SETTINGS} | {"KIANA_HOME"})
"""Every environment variable that changes what ``kiana`` does."""

# Tests never multicast in the root network namespace and never take the default mesh
# port: every node a test starts outside a namespace gets these (netns tests override them).
QUIET_MESH = {
    "KIANA_MESH_DISCOVERY": "0",
    "KIANA_MESH_PORT": "0",
    "KIANA_MESH_HOST": "127.0.0.1",
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``KIANA_*`` setting or forced colour."""
    env = {k: v for k, v in os.environ.items() if k not in KIANA_ENV and k not in {"FORCE_COLOR"}}
    env.update(QUIET_MESH)
    env.update(extra or {})
    return env


def kiana_argv(home: Path, *args: object) -> list[str]:
    """The real command line, as ``python -m kiana.cli.main --home HOME ...``."""
    return [sys.executable, "-m", "kiana.cli.main", "--home", str(home), *map(str, args)]


def run_kiana(
    home: Path,
    *args: object,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    stdin: str | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """Run ``kiana`` in a child process and return its exit code and output."""
    return subprocess.run(
        [*prefix, *kiana_argv(home, *args)],
        env=clean_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def open_node(home: Path) -> Iterator[Node]:
    """The node on ``home`` with default settings (no environment overrides)."""
    node = Node.open(load_settings(home=home, environ={}))
    try:
        yield node
    finally:
        node.close()


def copy_identity(src: Path, dst: Path) -> None:
    """A second home of the same mind and device: everything but the database."""
    dst.mkdir(mode=0o700, parents=True)
    shutil.copytree(src / "keys", dst / "keys")
    for name in ("mind.json", "api-token", "config.toml"):
        shutil.copy2(src / name, dst / name)


def count_rows(db: Path, table: str = "blocks") -> int | None:
    """Rows in ``table`` seen by a read-only connection; None while unreadable."""
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return None
