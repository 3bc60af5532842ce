"""Export a packaged model to ONNX once, into the model cache, safely.

``ensure_onnx`` returns the exported file's bytes after checking them against
the sha256 recorded when it was written. The export itself (torch, offline,
from the packaged weights) runs at most once at a time per cache folder: an
``flock`` on a lock file, released by the kernel if the process dies. The file
is written to a temporary name, checked against the torch model, fsynced and
renamed into place; the manifest (its sha256) is renamed last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiana.errors import EmbeddingModelError
from kiana.memory.embedding.registry import (
    INSTALL_HINT,
    ModelSpec,
    installed,
    model_dir,
    offline_hub,
    verify_files,
)

log = logging.getLogger("kiana.embeddings")

MANIFEST_FORMAT = 1
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "model.onnx.json"
LOCK_TIMEOUT_S = 900.0
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_dir(cache_dir: Path, spec: ModelSpec) -> Path:
    return cache_dir / "embeddings" / spec.name


def ensure_onnx(spec: ModelSpec, cache_dir: Path) -> bytes:
    """The verified bytes of ``spec``'s ONNX export, exporting it first if needed."""
    folder = export_dir(cache_dir, spec)
    data = read_verified(spec, folder)
    if data is not None:
        return data
    if not can_export():
        raise EmbeddingModelError(
            f"no ONNX export of {spec.name} in {folder}, and making one needs torch, "
            f"transformers and onnx; {INSTALL_HINT}"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddingModelError(f"cannot create the model cache {folder}: {exc}") from exc
    with _locked(folder / ".export.lock"):
        data = read_verified(spec, folder)  # another process may have finished meanwhile
        if data is None:
            export_onnx(spec, folder)
            data = read_verified(spec, folder)
    if data is None:
        raise EmbeddingModelError(f"the ONNX export of {spec.name} did not verify")
    return data


def can_export() -> bool:
    return installed("numpy", "torch", "transformers", "onnx", "onnxruntime")


def read_verified(spec: ModelSpec, folder: Path) -> bytes | None:
    """The exported file's bytes if its manifest matches, else None (missing or corrupt)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        data = (folder / ONNX_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    expected = {
        "format": MANIFEST_FORMAT,
        "model": spec.name,
        "source_sha256": spec.files.get("model.safetensors", ""),
    }
    if any(manifest.get(k) != v for k, v in expected.items()):
        log.warning(
            "the ONNX export of %s is from another model or format; exporting again", spec.name
        )
        return None
    if (
        manifest.get("size") != len(data)
        or manifest.get("sha256") != hashlib.sha256(data).hexdigest()
    ):
        log.warning("the ONNX export of %s fails its sha256 check; exporting again", spec.name)
        return None
    return data


@contextlib.contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    with path.open("a+b") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddingModelError(
                        f"timed out waiting for another process to export into {path.parent}"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def export_onnx(spec: ModelSpec, folder: Path) -> None:
    """Export with torch (offline, from the packaged weights); call with the lock held."""
    source = model_dir(spec)
    verify_files(spec, source)
    offline_hub()
    for stale in folder.glob(f"{ONNX_FILE}.tmp-*"):
        stale.unlink(missing_ok=True)  # left by an export that was killed
    started = time.monotonic()
    tmp = folder / f"{ONNX_FILE}.tmp-{os.getpid()}"
    try:
        _torch_export(source, tmp)
        data = tmp.read_bytes()
        _fsync_replace(tmp, folder / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": spec.name,
        "source_sha256": spec.files.get("model.safetensors", ""),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "exported": int(time.time() * 1000),
        "exporter": _versions(),
    }
    tmp_manifest = folder / f"{MANIFEST_FILE}.tmp-{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    _fsync_replace(tmp_manifest, folder / MANIFEST_FILE)
    log.info("exported %s to ONNX in %.1f s", spec.name, time.monotonic() - started)


def _fsync_replace(tmp: Path, target: Path) -> None:
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _versions() -> dict[str, str]:
    import onnx
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }


def _torch_export(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model: Any = AutoModel.from_pretrained(str(source), attn_implementation="eager")
    model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    # Trace with real padding, so no "mask is all ones" shortcut is baked into the graph.
    ids = torch.tensor([[101, 7592, 2088, 2003, 102], [101, 7592, 102, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    args = (ids, mask, torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
    with torch.no_grad():
        # The reference output comes first: running the model after tracing it
        # is not guaranteed to give the same numbers.
        expected = model(input_ids=ids, attention_mask=mask, token_type_ids=args[2])
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated and chatty (tracer warnings); the
        # result is checked against the torch model below instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(),
            args,
            str(target),
            dynamo=False,
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
        )
    _check_export(target, [a.numpy() for a in args], expected.last_hidden_state.numpy())


def _check_export(path: Path, inputs: list[Any], expected: Any) -> None:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip(INPUTS, inputs, strict=True)))[0]
    mask = inputs[1][..., None].astype(bool)
    if not np.allclose(np.where(mask, got, 0), np.where(mask, expected, 0), atol=1e-3):
        raise EmbeddingModelError("the ONNX export does not reproduce the torch model's output")
