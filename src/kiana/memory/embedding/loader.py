"""Choose a runtime and load the configured embedding model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kiana.config import Settings
from kiana.errors import EmbeddingModelError
from kiana.memory.embedding.onnx_export import can_export, export_dir
from kiana.memory.embedding.registry import (
    INSTALL_HINT,
    MODELS,
    get_spec,
    installed,
    onnx_available,
    torch_available,
)

if TYPE_CHECKING:
    from kiana.memory.embedder import Embedder

log = logging.getLogger("kiana.embeddings")

RUNTIMES = ("auto", "onnx", "torch")


def load_embedder(settings: Settings, *, runtime: str | None = None) -> Embedder:
    """Load the configured model with the configured (or given) runtime. Blocking."""
    spec = get_spec(settings.embedding_model)
    choice = runtime or settings.embedding_runtime
    if choice not in RUNTIMES:
        raise EmbeddingModelError(f"unknown embedding runtime {choice!r}; use auto, onnx or torch")
    reasons: list[str] = []
    if choice in {"auto", "onnx"}:
        try:
            return _load_onnx(settings)
        except EmbeddingModelError as exc:
            if choice == "onnx":
                raise
            reasons.append(f"onnx: {exc.message}")
            log.warning("ONNX runtime unavailable for %s, trying torch: %s", spec.name, exc.message)
    try:
        from kiana.memory.embedding.runtimes import TorchEmbedder

        if not torch_available():
            raise EmbeddingModelError("torch and sentence-transformers are not installed")
        return TorchEmbedder(spec)
    except EmbeddingModelError as exc:
        if choice == "torch":
            raise EmbeddingModelError(f"{exc.message}; {INSTALL_HINT}") from exc
        reasons.append(f"torch: {exc.message}")
    raise EmbeddingModelError(
        f"no embedding runtime works for {spec.name} ({'; '.join(reasons)}); {INSTALL_HINT}"
    )


def _load_onnx(settings: Settings) -> Embedder:
    spec = get_spec(settings.embedding_model)
    if not onnx_available():
        raise EmbeddingModelError("onnxruntime and tokenizers are not installed")
    from kiana.memory.embedding.onnx_export import ensure_onnx
    from kiana.memory.embedding.runtimes import OnnxEmbedder

    return OnnxEmbedder(spec, ensure_onnx(spec, settings.model_cache_dir))


def embedding_available(settings: Settings) -> bool:
    """Whether an embedder can probably be loaded, judged without importing anything heavy."""
    spec = MODELS.get(settings.embedding_model)
    if spec is None or not installed(spec.package):
        return False
    onnx_ok = onnx_available() and (
        can_export() or (export_dir(settings.model_cache_dir, spec) / "model.onnx").exists()
    )
    runtime = settings.embedding_runtime
    if runtime == "onnx":
        return onnx_ok
    if runtime == "torch":
        return torch_available()
    return onnx_ok or torch_available()
