"""What every runtime shares: input preparation, batching order, pooling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from kiana.memory.embedder import Vectors

MAX_CHARS = 64_000
"""Input is cut here before tokenising: far beyond any model's token limit
(256 tokens of at most ~100 characters each), so the vector is unchanged,
but a megabyte of text costs no more than a page."""

DEFAULT_BATCH = 32


def prepare(texts: Sequence[str]) -> list[str]:
    """Cut overlong input and replace what UTF-8 cannot carry (lone surrogates)."""
    out: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"embed() takes strings, not {type(text).__name__}")
        text = text[:MAX_CHARS]
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode("utf-8")
        out.append(text)
    return out


def embed_batched(
    texts: Sequence[str],
    dim: int,
    run: Callable[[list[str]], Vectors],
    batch_size: int = DEFAULT_BATCH,
) -> Vectors:
    """Run ``run`` over batches of similar length (less padding), in input order."""
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    prepared = prepare(texts)
    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i]))
    out = np.empty((len(prepared), dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = run([prepared[i] for i in idx])
    return out


def mean_pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Vectors:
    """Mean of the token vectors under the attention mask, then L2-normalised."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    return normalise(summed / counts)


def normalise(vectors: npt.NDArray[np.floating]) -> Vectors:
    arr = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out: Vectors = (arr / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out
