"""The ``VectorIndex`` protocol and the values it works with.

An index is a cache: the database stays the source of truth for vectors, so
every backend can be rebuilt from the store. Filters mirror
``kiana.store.BlockFilter`` (kind, scope, tag, author); erasure removes the
block's vector everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from kiana.store import BlockFilter


@dataclass(frozen=True, slots=True)
class VectorItem:
    block_id: str
    vector: npt.NDArray[np.float32]
    kind: str
    scope: str
    author: str
    tags: tuple[str, ...] = ()
    created: int = 0


@dataclass(frozen=True, slots=True)
class VectorHit:
    block_id: str
    score: float  # cosine similarity, higher is better


class VectorIndex(Protocol):
    @property
    def name(self) -> str: ...

    def add(self, items: Sequence[VectorItem]) -> None:
        """Insert or replace vectors (idempotent per block id)."""
        ...

    def remove(self, block_ids: Sequence[str]) -> None:
        """Forget these blocks' vectors; unknown ids are ignored."""
        ...

    def search(
        self, vector: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
    ) -> list[VectorHit]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class SyncableIndex(VectorIndex, Protocol):
    """What KI_ana's own backends add, so an index can be checked against the database."""

    def ids(self) -> set[str]:
        """Every block id the index holds a vector for."""
        ...

    def flush(self) -> None:
        """Make what was added or removed durable now (a no-op where writes already are)."""
        ...

    def discard_other_models(self) -> list[str]:
        """Delete this backend's indexes of other models (after a reindex); their names."""
        ...


def matches(item: VectorItem, flt: BlockFilter | None) -> bool:
    """Whether ``item`` passes ``flt``: the reference every backend's filtering must equal."""
    if flt is None:
        return True
    return (
        (flt.kind is None or item.kind == flt.kind)
        and (flt.scope is None or item.scope == flt.scope)
        and (flt.author is None or item.author == flt.author)
        and (flt.tag is None or flt.tag in item.tags)
        and (flt.since is None or item.created >= flt.since)
        and (flt.until is None or item.created < flt.until)
    )


def is_empty(flt: BlockFilter | None) -> bool:
    return flt is None or flt == BlockFilter()


def slug(model_id: str) -> str:
    """A file, table and collection name fragment for a model id: safe and collision-free."""
    clean = "".join(c if c.isascii() and c.isalnum() else "_" for c in model_id.lower())
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:8]
    return f"{clean.strip('_')[:40] or 'model'}_{digest}"


def as_matrix(
    vectors: npt.NDArray[np.float32] | Sequence[npt.NDArray[np.float32]], dim: int
) -> npt.NDArray[np.float32]:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {arr.shape}")
    return arr
