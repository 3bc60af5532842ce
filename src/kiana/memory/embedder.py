"""The ``Embedder`` protocol: text in, L2-normalised float32 vectors out.

``model_id`` names the vector space (not the runtime): the ONNX and torch
runtimes of the same model share a ``model_id`` because their vectors agree.
Every stored vector records the ``model_id`` and ``dim``; a changed model is
never mixed silently with old vectors (``kiana reindex``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return an array of shape (len(texts), dim), rows L2-normalised. Blocking."""
        ...
