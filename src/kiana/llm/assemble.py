"""Verify packaged model files and assemble split models into the model cache.

A single-file model is used where its package put it, after a sha256 check
whose result is recorded in the cache (keyed by path, size and mtime) so the
1 GB hash runs once, not on every start. A split model is concatenated into
``<cache>/<name>.gguf``:

- under an exclusive ``flock`` on ``<cache>/.<name>.lock``, so concurrent
  processes assemble it once (the others wait, then find it ready);
- into a temporary file in the same folder, hashing every part (the error
  names the package of a corrupt part) and the whole file while writing;
- ``fsync``, atomic ``rename``, ``fsync`` of the folder, then a record
  ``<name>.verified.json`` with the sha256, size and mtime.

A cached file is trusted without re-hashing only while its size and mtime
match the record and the record's sha256 is the registry's; otherwise it is
hashed again, and replaced if it is corrupt. ``verify="full"`` always hashes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiana.errors import BackendTimeoutError, LLMError, ModelCorruptError
from kiana.llm.registry import ModelSpec, Progress, locate_parts, pip_command

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
LOCK_TIMEOUT = 900.0  # seconds to wait for another process assembling the same model
Verify = Literal["auto", "full"]


@dataclass(frozen=True, slots=True)
class Record:
    """What a previous sha256 check established about a file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    def matches(self, path: Path, sha256: str) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        return (
            self.path == str(path)
            and self.size == st.st_size
            and self.mtime_ns == st.st_mtime_ns
            and self.sha256 == sha256
        )


def assembled_path(spec: ModelSpec, cache_dir: Path) -> Path:
    return cache_dir / f"{spec.name}.gguf"


def record_path(spec: ModelSpec, cache_dir: Path) -> Path:
    return cache_dir / f"{spec.name}.verified.json"


def read_record(spec: ModelSpec, cache_dir: Path) -> Record | None:
    try:
        data = json.loads(record_path(spec, cache_dir).read_text(encoding="utf-8"))
        return Record(
            str(data["path"]), int(data["size"]), int(data["mtime_ns"]), str(data["sha256"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_ready(spec: ModelSpec, cache_dir: Path) -> bool:
    """True if ``ensure_model`` would return at once (a trusted, verified file)."""
    record = read_record(spec, cache_dir)
    if record is None:
        return False
    return record.matches(Path(record.path), spec.sha256) and record.size == spec.size


def ensure_model(
    spec: ModelSpec,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    verify: Verify = "auto",
) -> Path:
    """Path of a verified GGUF file for ``spec``; assembles it on first use."""
    if spec.single_file:
        return _ensure_single(spec, cache_dir, progress, verify)
    target = assembled_path(spec, cache_dir)
    if verify == "auto" and _trusted(spec, cache_dir, target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{spec.name}.lock", spec.name):
        _remove_stale_temps(spec, cache_dir)
        if verify == "auto" and _trusted(spec, cache_dir, target):
            return target  # another process assembled it while we waited
        if target.exists():
            if _check_existing(spec, cache_dir, target, progress):
                return target
            log.warning("cached model %s is corrupt; assembling it again", target)
            target.unlink()
        parts = locate_parts(spec)
        _assemble(spec, parts, cache_dir, target, progress)
        return target


def _trusted(spec: ModelSpec, cache_dir: Path, path: Path) -> bool:
    record = read_record(spec, cache_dir)
    return record is not None and record.size == spec.size and record.matches(path, spec.sha256)


def _ensure_single(
    spec: ModelSpec, cache_dir: Path, progress: Progress | None, verify: Verify
) -> Path:
    (path,) = locate_parts(spec)
    if verify == "auto" and _trusted(spec, cache_dir, path):
        return path
    st = path.stat()
    part = spec.parts[0]
    digest = "" if st.st_size != spec.size else _hash_file(path, progress)
    if digest != spec.sha256:
        found = f"sha256 {digest}" if digest else f"{st.st_size} bytes, not {spec.size}"
        raise ModelCorruptError(
            f"{path} (package {part.requirement}) is corrupt: {found}, expected sha256"
            f" {spec.sha256}. Reinstall it: {_reinstall(spec, [part.requirement])}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_record(spec, cache_dir, path, st, digest)
    return path


def _check_existing(
    spec: ModelSpec, cache_dir: Path, target: Path, progress: Progress | None
) -> bool:
    """Hash a cached file that has no valid record; record it if it is good."""
    st = target.stat()
    if st.st_size != spec.size:
        return False
    digest = _hash_file(target, progress)
    if digest != spec.sha256:
        return False
    _write_record(spec, cache_dir, target, st, digest)
    return True


def _assemble(
    spec: ModelSpec,
    parts: tuple[Path, ...],
    cache_dir: Path,
    target: Path,
    progress: Progress | None,
) -> None:
    free = shutil.disk_usage(cache_dir).free
    if free < spec.size + 64 * 1024 * 1024:
        raise LLMError(
            f"not enough disk space in {cache_dir} to assemble '{spec.name}':"
            f" needs {spec.size / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
            " (set models.cache_dir / KIANA_MODEL_CACHE to another disk)"
        )
    tmp = cache_dir / f".{spec.name}.gguf.{os.getpid()}.{time.monotonic_ns()}.tmp"
    whole = hashlib.sha256()
    done = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        with tmp.open("wb") as out:
            for part, path in zip(spec.parts, parts, strict=True):
                part_hash = hashlib.sha256()
                part_size = 0
                with path.open("rb") as src:
                    while n := src.readinto(buf):
                        chunk = view[:n]
                        part_hash.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                        part_size += n
                        done += n
                        if progress is not None:
                            progress("assemble", done, spec.size)
                if part_size != part.size or part_hash.hexdigest() != part.sha256:
                    raise ModelCorruptError(
                        f"part {path} of '{spec.name}' (package {part.requirement}) is corrupt:"
                        f" {part_size} bytes with sha256 {part_hash.hexdigest()}, expected"
                        f" {part.size} bytes with sha256 {part.sha256}."
                        f" Reinstall it: {_reinstall(spec, [part.requirement])}"
                    )
            out.flush()
            os.fsync(out.fileno())
        digest = whole.hexdigest()
        if done != spec.size or digest != spec.sha256:  # every part matched: a registry error
            raise ModelCorruptError(
                f"'{spec.name}' assembled to {done} bytes with sha256 {digest},"
                f" expected {spec.size} bytes with sha256 {spec.sha256}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(cache_dir)
    _write_record(spec, cache_dir, target, target.stat(), digest)
    log.info("assembled chat model %s (%d bytes)", spec.name, done)


def _reinstall(spec: ModelSpec, requirements: list[str]) -> str:
    return pip_command(spec, requirements).replace(
        "pip install", "pip install --force-reinstall", 1
    )


def _hash_file(path: Path, progress: Progress | None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb") as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            done += n
            if progress is not None:
                progress("verify", done, total)
    return digest.hexdigest()


def _write_record(
    spec: ModelSpec, cache_dir: Path, path: Path, st: os.stat_result, digest: str
) -> None:
    record = {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest,
        "model": spec.name,
    }
    final = record_path(spec, cache_dir)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, final)


def _remove_stale_temps(spec: ModelSpec, cache_dir: Path) -> None:
    """Temporary files left by a crashed assembly (we hold the lock: none is live)."""
    for stale in cache_dir.glob(f".{spec.name}.gguf.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise BackendTimeoutError(
                        f"gave up after {timeout:.0f} s waiting for another process"
                        f" to finish assembling '{name}' (lock {path})"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
