"""The ``VectorIndex`` protocol and the values it works with.

An index is a cache: the database stays the source of truth for vectors, so
every backend can be rebuilt from the store. Filters mirror
``kiana.store.BlockFilter`` (kind, scope, tag, author); erasure removes the
block's vector everywhere.
"""

from __future__ import annotations

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
