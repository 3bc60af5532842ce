"""Qdrant backend: local mode in the home by default, a server when ``qdrant_url`` is set.

Point ids are UUIDs derived from block ids (uuid5), the block id travels in
the payload with kind, scope, author, tags and created for filtering.
Qdrant's local mode is an exact search kept in one process's memory; it
holds an exclusive lock on its folder, commits every point to SQLite on its
own (slow to fill: ~50 points/s measured) and is meant for up to ~20 000
points. ``url=":memory:"`` is local mode without a folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.errors import VectorIndexError
from kiana.memory.vectors.base import VectorHit, VectorItem, as_matrix, slug
from kiana.store import BlockFilter

NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-4f7e-9a51-6b3f0c9d2e11")
BATCH = 256


def point_id(block_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, block_id))


class QdrantIndex:
    name = "qdrant"

    def __init__(self, model_id: str, dim: int, *, path: Path | None = None, url: str = "") -> None:
        try:
            from qdrant_client import QdrantClient, models
        except ImportError as exc:
            raise VectorIndexError(
                "qdrant-client is not installed; pip install 'kiana[qdrant]'"
            ) from exc
        self._models: Any = models
        self.model_id = model_id
        self.dim = dim
        self.collection = f"kiana-{slug(model_id)}"
        self._local = not url or url == ":memory:"
        try:
            if url == ":memory:":  # local mode without persistence (benchmarks, tests)
                self._client: Any = QdrantClient(location=":memory:")
            elif url:
                self._client = QdrantClient(url=url, timeout=30)
            else:
                if path is None:
                    raise VectorIndexError("the qdrant backend needs a folder or a server URL")
                path.mkdir(parents=True, exist_ok=True)
                self._client = QdrantClient(path=str(path))
        except RuntimeError as exc:  # local mode: the folder is locked by another client
            raise VectorIndexError(f"cannot open Qdrant: {exc}") from exc
        self._setup(server=not self._local)

    def _setup(self, *, server: bool) -> None:
        m = self._models
        if self._client.collection_exists(self.collection):
            info = self._client.get_collection(self.collection)
            size = info.config.params.vectors.size
            if size != self.dim:
                raise VectorIndexError(
                    f"Qdrant collection {self.collection} holds {size}-dim vectors, not {self.dim}"
                )
            return
        self._client.create_collection(
            self.collection,
            vectors_config=m.VectorParams(size=self.dim, distance=m.Distance.COSINE),
            hnsw_config=m.HnswConfigDiff(m=16, ef_construct=128),
        )
        if server:  # payload indexes do nothing in local mode
            for key in ("kind", "scope", "author", "tags"):
                self._client.create_payload_index(self.collection, key, m.PayloadSchemaType.KEYWORD)
            self._client.create_payload_index(
                self.collection, "created", m.PayloadSchemaType.INTEGER
            )

    def add(self, items: Sequence[VectorItem]) -> None:
        latest = list({it.block_id: it for it in items}.values())
        if not latest:
            return
        matrix = as_matrix([it.vector for it in latest], self.dim)
        m = self._models
        for start in range(0, len(latest), BATCH):
            points = [
                m.PointStruct(
                    id=point_id(it.block_id),
                    vector=vec.tolist(),
                    payload={
                        "block_id": it.block_id,
                        "kind": it.kind,
                        "scope": it.scope,
                        "author": it.author,
                        "tags": list(it.tags),
                        "created": it.created,
                    },
                )
                for it, vec in zip(
                    latest[start : start + BATCH], matrix[start : start + BATCH], strict=True
                )
            ]
            self._client.upsert(self.collection, points=points, wait=True)

    def remove(self, block_ids: Sequence[str]) -> None:
        ids = [point_id(b) for b in dict.fromkeys(block_ids)]
        for start in range(0, len(ids), BATCH):
            selector = self._models.PointIdsList(points=ids[start : start + BATCH])
            self._client.delete(self.collection, points_selector=selector, wait=True)

    def search(
        self, vector: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
    ) -> list[VectorHit]:
        query = as_matrix(vector, self.dim)[0].tolist()
        if k <= 0:
            return []
        # Local mode searches exactly and warns about search parameters.
        params = None if self._local else self._models.SearchParams(hnsw_ef=max(128, k))
        result = self._client.query_points(
            self.collection,
            query=query,
            limit=k,
            query_filter=self._filter(flt),
            with_payload=["block_id"],
            search_params=params,
        )
        hits = [VectorHit(str(p.payload["block_id"]), float(p.score)) for p in result.points]
        return sorted(hits, key=lambda h: (-h.score, h.block_id))

    def _filter(self, flt: BlockFilter | None) -> Any:
        if flt is None:
            return None
        m = self._models
        must: list[Any] = []
        for key, value in (
            ("kind", flt.kind),
            ("scope", flt.scope),
            ("author", flt.author),
            ("tags", flt.tag),
        ):
            if value is not None:
                must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
        if flt.since is not None or flt.until is not None:
            rng = m.Range(gte=flt.since, lt=flt.until)
            must.append(m.FieldCondition(key="created", range=rng))
        return m.Filter(must=must) if must else None

    def count(self) -> int:
        return int(self._client.count(self.collection, exact=True).count)

    def ids(self) -> set[str]:
        out: set[str] = set()
        offset = None
        while True:
            records, offset = self._client.scroll(
                self.collection,
                limit=2048,
                offset=offset,
                with_payload=["block_id"],
                with_vectors=False,
            )
            out.update(str(r.payload["block_id"]) for r in records)
            if offset is None:
                return out

    def flush(self) -> None:
        """Upserts and deletes wait for Qdrant to persist them."""

    def discard_other_models(self) -> list[str]:
        names = [c.name for c in self._client.get_collections().collections]
        gone = [n for n in names if n.startswith("kiana-") and n != self.collection]
        for name in gone:
            self._client.delete_collection(name)
        return gone

    def close(self) -> None:
        self._client.close()
