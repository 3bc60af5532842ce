"""ChromaDB backend: a PersistentClient in the home, fed KI_ana's own vectors.

Chroma never embeds anything here (``embedding_function=None``: its default
would download a model), and its telemetry is off. Tags become boolean
metadata keys ``tag:<tag>``, so a tag filter is a plain equality.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.errors import VectorIndexError
from kiana.memory.vectors.base import VectorHit, VectorItem, as_matrix, slug
from kiana.store import BlockFilter

TAG_PREFIX = "tag:"
EF_SEARCH = 200  # recall@10 0.949 at 100 on 100k real MiniLM vectors; see docs/benchmarks.md
PAGE = 5000


class ChromaIndex:
    name = "chroma"

    def __init__(self, directory: Path, model_id: str, dim: int) -> None:
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings
        except ImportError as exc:
            raise VectorIndexError(
                "chromadb is not installed; pip install 'kiana[chroma]'"
            ) from exc
        # Chroma logs a warning whenever n_results exceeds a filter's matches; not ours to show.
        logging.getLogger("chromadb").setLevel(logging.ERROR)
        self.model_id = model_id
        self.dim = dim
        directory.mkdir(parents=True, exist_ok=True)
        settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False, is_persistent=True)
        self._client: Any = chromadb.PersistentClient(path=str(directory), settings=settings)
        self._collection: Any = self._client.get_or_create_collection(
            f"kiana-{slug(model_id)}",
            embedding_function=None,
            metadata={"model": model_id, "dim": dim},
            configuration={
                "hnsw": {
                    "space": "cosine",
                    "ef_construction": 200,
                    "ef_search": EF_SEARCH,
                    "max_neighbors": 16,
                }
            },
        )
        self._batch = int(self._client.get_max_batch_size())

    def add(self, items: Sequence[VectorItem]) -> None:
        latest = list({it.block_id: it for it in items}.values())
        if not latest:
            return
        matrix = as_matrix([it.vector for it in latest], self.dim)
        for start in range(0, len(latest), self._batch):
            part = latest[start : start + self._batch]
            self._collection.upsert(
                ids=[it.block_id for it in part],
                embeddings=matrix[start : start + len(part)],
                metadatas=[_metadata(it) for it in part],
            )

    def remove(self, block_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(block_ids))
        for start in range(0, len(ids), self._batch):
            self._collection.delete(ids=ids[start : start + self._batch])

    def search(
        self, vector: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
    ) -> list[VectorHit]:
        query = as_matrix(vector, self.dim)
        if k <= 0:
            return []
        # No count() first: it costs ~7 ms at 100k; Chroma returns fewer rows by itself.
        result = self._collection.query(
            query_embeddings=query,
            n_results=k,
            where=_where(flt),
            include=["distances"],
        )
        hits = [
            VectorHit(str(i), 1.0 - float(d))
            for i, d in zip(result["ids"][0], result["distances"][0], strict=True)
        ]
        return sorted(hits, key=lambda h: (-h.score, h.block_id))

    def count(self) -> int:
        return int(self._collection.count())

    def ids(self) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            page = self._collection.get(include=[], limit=PAGE, offset=offset)["ids"]
            out.update(page)
            if len(page) < PAGE:
                return out
            offset += PAGE

    def flush(self) -> None:
        """Chroma persists every write itself."""

    def discard_other_models(self) -> list[str]:
        names = [getattr(c, "name", c) for c in self._client.list_collections()]
        gone = [str(n) for n in names if str(n).startswith("kiana-") and n != self._collection.name]
        for name in gone:
            self._client.delete_collection(name)
        return gone

    def close(self) -> None:
        self._client.close()


def _metadata(item: VectorItem) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kind": item.kind,
        "scope": item.scope,
        "author": item.author,
        "created": item.created,
    }
    for tag in item.tags:
        meta[TAG_PREFIX + tag] = True
    return meta


def _where(flt: BlockFilter | None) -> dict[str, Any] | None:
    if flt is None:
        return None
    clauses: list[dict[str, Any]] = []
    for key, value in (("kind", flt.kind), ("scope", flt.scope), ("author", flt.author)):
        if value is not None:
            clauses.append({key: value})
    if flt.tag is not None:
        clauses.append({TAG_PREFIX + flt.tag: True})
    if flt.since is not None:
        clauses.append({"created": {"$gte": flt.since}})
    if flt.until is not None:
        clauses.append({"created": {"$lt": flt.until}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
