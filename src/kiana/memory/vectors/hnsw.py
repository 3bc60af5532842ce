"""The embedded default backend: an hnswlib graph persisted beside the database.

A cache of the ``embeddings`` table: files that are missing, damaged or for
another model are discarded and the index starts empty, to be refilled from
the database (``VectorMemory.sync``). Deleted blocks are overwritten with a
constant vector before hnswlib marks them deleted, so an erased block's
vector is gone from memory and, after ``flush``, from disk.

Filtered queries: when few labels pass the filter (<= ``exact_limit``), the
passing vectors are scored exactly (hnswlib's ``get_items`` is slow, ~10-30 us
a vector, so only for small sets); otherwise hnswlib searches with the filter
as a predicate, which keeps exploring the graph until it has ``k`` matches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.errors import VectorIndexError
from kiana.memory.vectors import hnsw_files
from kiana.memory.vectors.base import VectorHit, VectorItem, as_matrix, is_empty, slug
from kiana.memory.vectors.labels import LabelTable
from kiana.store import BlockFilter

log = logging.getLogger("kiana.vectors")

M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 200  # recall@10 0.965 at 100k real MiniLM vectors (64: 0.911); docs/benchmarks.md
EF_FILTERED = (
    64  # a filtered search must find ef *matching* vectors: 200 made a 2 % filter 2x slower
)
EXACT_LIMIT = 256
AUTOSAVE_ADDS = 20_000


class HnswIndex:
    name = "hnsw"

    def __init__(
        self,
        directory: Path,
        model_id: str,
        dim: int,
        *,
        ef_search: int = EF_SEARCH,
        threads: int = 2,
        exact_limit: int = EXACT_LIMIT,
    ) -> None:
        try:
            import hnswlib
        except ImportError as exc:
            raise VectorIndexError(
                "hnswlib is not installed; pip install 'kiana[embeddings]'"
            ) from exc
        self._hnswlib: Any = hnswlib
        self.directory = directory
        self.model_id = model_id
        self.dim = dim
        self.ef_search = ef_search
        self.exact_limit = exact_limit
        self._threads = threads
        self._name = slug(model_id)
        self._lock = threading.RLock()
        self._unsaved = 0
        self.rebuilt = False  # True when files existed but could not be used
        directory.mkdir(parents=True, exist_ok=True)
        self._labels = LabelTable()
        self._index = self._new_index(1024)
        self._load()

    # -- VectorIndex ------------------------------------------------------------------

    def add(self, items: Sequence[VectorItem]) -> None:
        if not items:
            return
        latest = {it.block_id: it for it in items}  # the last one wins, as upserts do
        matrix = as_matrix([it.vector for it in latest.values()], self.dim)
        with self._lock:
            labels: list[int] = []
            fresh: list[bool] = []
            for item in latest.values():
                label, new = self._labels.assign(item)
                labels.append(label)
                fresh.append(new)
            is_new = np.array(fresh)
            needed = self._index.element_count + int(is_new.sum())
            if needed > self._index.max_elements:
                self._index.resize_index(max(needed, 2 * self._index.max_elements))
            label_arr = np.asarray(labels, dtype=np.int64)
            for sel, replace in ((is_new, True), (~is_new, False)):
                if sel.any():
                    self._index.add_items(
                        matrix[sel],
                        label_arr[sel],
                        num_threads=self._threads,
                        replace_deleted=replace,
                    )
            self._unsaved += len(labels)
            if self._unsaved >= AUTOSAVE_ADDS:
                self._save()

    def remove(self, block_ids: Sequence[str]) -> None:
        scrub = np.zeros((1, self.dim), dtype=np.float32)
        scrub[0, 0] = 1.0
        with self._lock:
            for block_id in dict.fromkeys(block_ids):
                label = self._labels.drop(block_id)
                if label is None:
                    continue
                # Overwrite the vector itself: mark_deleted alone keeps it in memory and on disk.
                self._index.add_items(scrub, np.array([label]), num_threads=1)
                self._index.mark_deleted(label)
                self._unsaved += 1

    def search(
        self, vector: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
    ) -> list[VectorHit]:
        query = as_matrix(vector, self.dim)
        with self._lock:
            alive = len(self._labels)
            if k <= 0 or alive == 0:
                return []
            if is_empty(flt):
                return self._knn(query, min(k, alive), None, None)
            assert flt is not None
            mask = self._labels.mask(flt)
            allowed = np.flatnonzero(mask)
            if len(allowed) == 0:
                return []
            if len(allowed) <= self.exact_limit:
                return self._exact(query, allowed, k)
            return self._knn(query, min(k, len(allowed)), mask, allowed)

    def count(self) -> int:
        return len(self._labels)

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._labels.by_id)

    def flush(self) -> None:
        with self._lock:
            if self._unsaved:
                self._save()

    def close(self) -> None:
        self.flush()

    def discard_other_models(self) -> list[str]:
        gone = []
        for sidecar in self.directory.glob("*.json"):
            name = sidecar.stem
            if name == self._name:
                continue
            with hnsw_files.locked(self.directory, name):
                hnsw_files.discard(self.directory, name)
            (self.directory / f".{name}.lock").unlink(missing_ok=True)
            gone.append(name)
        for orphan in self.directory.glob("*.bin"):
            if not orphan.name.startswith(f"{self._name}-"):
                orphan.unlink(missing_ok=True)
        return gone

    # -- internals ----------------------------------------------------------------------

    def _new_index(self, capacity: int) -> Any:
        index = self._hnswlib.Index(space="cosine", dim=self.dim)
        index.init_index(
            max_elements=capacity,
            ef_construction=EF_CONSTRUCTION,
            M=M,
            allow_replace_deleted=True,
            random_seed=1,
        )
        index.set_ef(self.ef_search)
        return index

    def _knn(
        self, query: npt.NDArray[np.float32], k: int, mask: Any, allowed: Any
    ) -> list[VectorHit]:
        self._index.set_ef(max(self.ef_search if mask is None else EF_FILTERED, k))
        try:
            if mask is None:
                labels, dists = self._index.knn_query(query, k=k, num_threads=1)
            else:
                labels, dists = self._index.knn_query(
                    query, k=k, num_threads=1, filter=mask.__getitem__
                )
        except RuntimeError:  # fewer than k reachable: score the candidates exactly
            if allowed is None:
                allowed = np.fromiter(self._labels.by_id.values(), dtype=np.int64)
            return self._exact(query, allowed, k)
        ids = self._labels.ids
        hits = [
            VectorHit(str(ids[int(lb)]), 1.0 - float(d))
            for lb, d in zip(labels[0], dists[0], strict=True)
        ]
        return sorted(hits, key=lambda h: (-h.score, h.block_id))

    def _exact(
        self, query: npt.NDArray[np.float32], allowed: npt.NDArray[np.int64], k: int
    ) -> list[VectorHit]:
        vectors = np.asarray(self._index.get_items(allowed, return_type="numpy"), np.float32)
        norm = query[0] / max(float(np.linalg.norm(query[0])), 1e-12)
        scores = vectors @ norm
        top = np.argsort(-scores, kind="stable")[:k]
        ids = self._labels.ids
        hits = [VectorHit(str(ids[int(allowed[i])]), float(scores[i])) for i in top]
        return sorted(hits, key=lambda h: (-h.score, h.block_id))

    def _load(self) -> None:
        try:
            with hnsw_files.locked(self.directory, self._name, shared=True):
                meta, path = hnsw_files.read(
                    self.directory, self._name, model=self.model_id, dim=self.dim
                )
                labels = LabelTable.from_json(meta)
                index = self._hnswlib.Index(space="cosine", dim=self.dim)
                capacity = max(int(meta.get("max_elements", 0)), labels.next_label + 1024)
                index.load_index(str(path), max_elements=capacity, allow_replace_deleted=True)
            known = set(index.get_ids_list())
            if any(label not in known for label in labels.by_id.values()):
                raise hnsw_files.IndexFileError("sidecar and index file disagree")
        except hnsw_files.IndexFileError as exc:
            if str(exc) != "no index file":
                self._discard(str(exc))
            return
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            self._discard(f"{type(exc).__name__}: {exc}")
            return
        index.set_ef(self.ef_search)
        self._index, self._labels = index, labels

    def _discard(self, reason: str) -> None:
        log.warning("vector index for %s unusable (%s); rebuilding it", self.model_id, reason)
        self.rebuilt = True
        with hnsw_files.locked(self.directory, self._name):
            hnsw_files.discard(self.directory, self._name)

    def _save(self) -> None:
        meta = {
            "model": self.model_id,
            "dim": self.dim,
            "space": "cosine",
            "M": M,
            "ef_construction": EF_CONSTRUCTION,
            "max_elements": int(self._index.max_elements),
            "count": len(self._labels),
            **self._labels.to_json(),
        }
        try:
            with hnsw_files.locked(self.directory, self._name):
                hnsw_files.write(self.directory, self._name, meta, self._index.save_index)
        except OSError as exc:
            raise VectorIndexError(
                f"cannot save the vector index in {self.directory}: {exc}"
            ) from exc
        self._unsaved = 0
