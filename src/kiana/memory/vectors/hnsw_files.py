"""On-disk form of the hnsw backend: an hnswlib file and a JSON sidecar, saved atomically.

``<dir>/<slug>.json`` (the sidecar) names the index file ``<slug>-<gen>.bin``
and records its size and sha256, the model id, dimension and the metadata
every label carries (block id, kind, scope, author, tags, created). Saving
writes a new generation under temporary names, fsyncs, renames the index file
and then the sidecar (the commit point), and deletes older generations; an
``flock`` serialises savers across processes. Loading verifies the sha256
before hnswlib reads a byte, so a damaged file is never parsed; any mismatch
means "rebuild from the database".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMAT = 1


class IndexFileError(Exception):
    """The files are missing, damaged or for another model: rebuild."""


@contextlib.contextmanager
def locked(directory: Path, name: str, *, shared: bool = False) -> Iterator[None]:
    with (directory / f".{name}.lock").open("a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read(directory: Path, name: str, *, model: str, dim: int) -> tuple[dict[str, Any], Path]:
    """The verified sidecar and the path of the index file it names."""
    sidecar = directory / f"{name}.json"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFileError("no index file") from None
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"unreadable sidecar: {exc}") from exc
    if not isinstance(meta, dict):
        raise IndexFileError("sidecar is not an object")
    for key, expected in (("format", FORMAT), ("model", model), ("dim", dim)):
        if meta.get(key) != expected:
            raise IndexFileError(f"sidecar {key} is {meta.get(key)!r}, expected {expected!r}")
    file = meta.get("file")
    if not isinstance(file, str) or "/" in file or not file.startswith(f"{name}-"):
        raise IndexFileError("sidecar names no index file")
    path = directory / file
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IndexFileError(f"index file missing: {exc}") from exc
    if size != meta.get("size") or sha256_file(path) != meta.get("sha256"):
        raise IndexFileError("index file does not match its recorded sha256")
    return meta, path


def write(directory: Path, name: str, meta: dict[str, Any], save_index: Any) -> None:
    """Save a new generation: ``save_index(path)`` writes the hnswlib file."""
    gen = secrets.token_hex(6)
    file = f"{name}-{gen}.bin"
    tmp_bin = directory / f".{file}.tmp"
    tmp_meta = directory / f".{name}-{gen}.json.tmp"
    try:
        save_index(str(tmp_bin))
        _fsync(tmp_bin)
        digest, size = sha256_file(tmp_bin), tmp_bin.stat().st_size
        os.replace(tmp_bin, directory / file)
        body = {**meta, "format": FORMAT, "file": file, "size": size, "sha256": digest}
        tmp_meta.write_text(json.dumps(body, separators=(",", ":")), encoding="utf-8")
        _fsync(tmp_meta)
        os.replace(tmp_meta, directory / f"{name}.json")
        _fsync_dir(directory)
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    for old in directory.glob(f"{name}-*.bin"):
        if old.name != file:
            old.unlink(missing_ok=True)


def discard(directory: Path, name: str) -> None:
    """Delete a damaged index (called with the lock held)."""
    (directory / f"{name}.json").unlink(missing_ok=True)
    for old in directory.glob(f"{name}-*.bin"):
        old.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
