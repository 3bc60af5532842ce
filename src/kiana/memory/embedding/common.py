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

DEFAULT_BATCH = 64
TOKEN_BUDGET = 4096
"""Most tokens (estimated) in one batch: attention memory grows with batch x length^2,
so 16 chunks of 256 tokens make one batch (peak RSS ~550 MB; 32 of them: ~780 MB),
while short sentences still go 64 at a time."""


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


def estimate_tokens(text: str, max_tokens: int) -> int:
    return min(max_tokens, len(text) // 3 + 2)


def embed_batched(
    texts: Sequence[str],
    dim: int,
    run: Callable[[list[str]], Vectors],
    batch_size: int = DEFAULT_BATCH,
    *,
    max_tokens: int = 256,
    token_budget: int = TOKEN_BUDGET,
) -> Vectors:
    """Run ``run`` over batches of similar length (less padding), in input order.

    A batch holds at most ``batch_size`` texts and about ``token_budget`` tokens
    (padded to its longest text), which bounds the memory one batch needs.
    """
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    prepared = prepare(texts)
    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i]))
    out = np.empty((len(prepared), dim), dtype=np.float32)
    batch: list[int] = []
    for i in order:  # ascending length: the text being added is the batch's longest
        longest = estimate_tokens(prepared[i], max_tokens)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * longest > token_budget):
            out[batch] = run([prepared[j] for j in batch])
            batch = []
        batch.append(i)
    out[batch] = run([prepared[j] for j in batch])
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
