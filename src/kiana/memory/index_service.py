"""Vector memory: embed blocks, keep their vectors in the database and an index, search.

The ``embeddings`` table is the source of truth; the index is a cache that
``sync`` reconciles with it (on first use, after another process wrote, and
in ``reindex``). Writes go to the database first. Embedding and loading are
lazy and blocking: async callers run these methods on a thread.

Freshness: before a search (at most once per ``check_interval`` seconds) the
newest ``stored`` time of the model's vectors is compared with the one the
index last saw, so vectors written by another process (``kiana remember``
while ``kiana serve`` runs) are picked up. Every hit is checked against the
table, so a block erased anywhere is never returned, and ``close`` syncs
before the index is saved, so an erased vector is never written back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.blocks import Block
from kiana.config import Settings
from kiana.errors import EmbeddingModelError, KianaError
from kiana.memory.embedder import Embedder
from kiana.memory.embedding.loader import load_embedder
from kiana.memory.embedding.registry import get_spec
from kiana.memory.vectors import factory
from kiana.memory.vectors.base import SyncableIndex, VectorHit
from kiana.memory.vectors.table import Doc, EmbeddingTable, doc_for
from kiana.store import BlockFilter, BlockStore

log = logging.getLogger("kiana.vectors")

Progress = Callable[[int], None]
EAGER_BATCH = 256  # a write this large opens the index even if nothing else has
SYNC_BATCH = 2000


@dataclass(frozen=True, slots=True)
class ReindexReport:
    model: str
    embedded: int
    missing_before: int
    seconds: float


class VectorMemory:
    def __init__(
        self,
        store: BlockStore,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        index: SyncableIndex | None = None,
        check_interval: float = 0.5,
        batch: int = 256,
    ) -> None:
        self.store = store
        self.settings = settings
        if embedder is not None:
            self.model_id, self.dim = embedder.model_id, embedder.dim
        else:
            spec = get_spec(settings.embedding_model)
            self.model_id, self.dim = spec.name, spec.dim
        self.backend = (
            index.name if index is not None else factory.backend_name(settings, store.db.dialect)
        )
        self.table = EmbeddingTable(store.db)
        self.check_interval = check_interval
        self.batch = batch
        self._embedder = embedder
        self._index = index
        self._synced: int | None = None  # newest ``stored`` the index has seen
        self._seen_at_newest: set[str] = set()  # ids stored at exactly that time
        self._own: set[str] = set()  # ids this process wrote to table and index since then
        self._checked = 0.0
        self._lock = threading.RLock()  # guards the index and the sync state
        self._load_lock = threading.Lock()
        if index is not None:
            self.sync(full=True)

    # -- lazily created parts -------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._load_lock:
                if self._embedder is None:
                    embedder = load_embedder(self.settings)
                    if (embedder.model_id, embedder.dim) != (self.model_id, self.dim):
                        raise EmbeddingModelError("the loaded model is not the configured one")
                    self._embedder = embedder
        return self._embedder

    @property
    def index(self) -> SyncableIndex:
        with self._lock:
            if self._index is None:
                self._index = factory.open_index(
                    self.settings, self.store.db, self.model_id, self.dim
                )
                self.backend = self._index.name
                self.sync(full=True)
            return self._index

    @property
    def index_loaded(self) -> bool:
        return self._index is not None

    # -- writing ------------------------------------------------------------------------------

    def index_blocks(self, blocks: Sequence[Block], *, only_missing: bool = True) -> int:
        """Embed and store vectors for these (stored, live) blocks. Returns how many were made."""
        return self._index_docs([doc_for(b) for b in blocks], only_missing=only_missing)

    def _index_docs(self, docs: Sequence[Doc], *, only_missing: bool = True) -> int:
        docs = list({d.block_id: d for d in docs}.values())
        if only_missing and docs:
            have = self.table.having(self.model_id, [d.block_id for d in docs])
            docs = [d for d in docs if d.block_id not in have]
        if not docs:
            return 0
        vectors = self.embed([d.text for d in docs])
        stored = self.table.put(
            self.model_id, self.dim, ((d.block_id, v) for d, v in zip(docs, vectors, strict=True))
        )
        items = [d.item(v) for d, v in zip(docs, vectors, strict=True) if d.block_id in stored]
        with self._lock:
            eager = factory.shared(self.settings, self.backend) or len(items) >= EAGER_BATCH
            if self._index is not None:
                self._index.add(items)
                self._own.update(stored)
            elif eager:
                _ = self.index  # opening syncs from the table, which now holds these
        return len(stored)

    def remove(self, block_ids: Sequence[str]) -> None:
        """Erase these blocks' vectors from the table and from the index (durably)."""
        ids = list(dict.fromkeys(block_ids))
        if not ids:
            return
        self.table.delete(ids)
        with self._lock:
            if self._index is None and not factory.index_exists(
                self.settings, self.store.db.dialect, self.model_id
            ):
                return
            index = self.index
            index.remove(ids)
            index.flush()

    # -- reading ------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.embedder.embed(texts)

    def search(
        self, text: str, k: int = 10, flt: BlockFilter | None = None
    ) -> list[tuple[str, float]]:
        """Block ids most similar to ``text``, best first, with cosine similarity."""
        if k <= 0:
            return []
        vector = self.embed([text])[0]
        return [(h.block_id, h.score) for h in self.search_vector(vector, k, flt)]

    def search_vector(
        self, vector: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
    ) -> list[VectorHit]:
        with self._lock:
            index = self.index
            if time.monotonic() - self._checked >= self.check_interval:
                self._checked = time.monotonic()
                if self.table.newest(self.model_id) != self._synced:
                    self.sync()
            for _ in range(3):
                hits = index.search(vector, k, flt)
                valid = self.table.having(self.model_id, [h.block_id for h in hits])
                stale = [h.block_id for h in hits if h.block_id not in valid]
                if not stale:
                    return hits
                log.info("dropping %d stale vector(s) from the %s index", len(stale), index.name)
                index.remove(stale)
            return [h for h in hits if h.block_id in valid]

    # -- maintenance ----------------------------------------------------------------------------

    def sync(self, *, full: bool = False) -> tuple[int, int]:
        """Bring the index in line with the table: (added, removed).

        Full: compare every id (on open, in reindex, before closing). Otherwise add only
        what was stored since the last sync by someone else: cheap, proportional to that.
        """
        with self._lock:
            index = self.index
            drop: list[str] = []
            if full or self._synced is None:
                rows = self.table.ids(self.model_id)
                have = index.ids()
                add = set(rows) - have
                drop = sorted(have - set(rows))
            else:  # new or replaced vectors; erasures are caught per hit and by a full sync
                rows = self.table.ids(self.model_id, since=self._synced)
                add = set(rows) - self._own - self._seen_at_newest
            newest = max(rows.values(), default=self._synced or 0)
            if rows:
                self._seen_at_newest = {i for i, t in rows.items() if t == newest}
            ordered = sorted(add)
            for start in range(0, len(ordered), SYNC_BATCH):
                part = ordered[start : start + SYNC_BATCH]
                index.add(self.table.items(self.model_id, self.dim, part))
            if drop:
                index.remove(drop)
                index.flush()
            if add or drop:
                log.info("synced the %s index: +%d -%d", index.name, len(add), len(drop))
            self._own.clear()
            self._synced = newest
            self._checked = time.monotonic()
            return len(add), len(drop)

    def reindex(
        self, progress: Progress | None = None, *, batch: int | None = None
    ) -> ReindexReport:
        """Embed every live block whose vector is missing or from another model."""
        started = time.monotonic()
        before = self.table.missing_count(self.model_id)
        size = batch or self.batch
        done, after_seq = 0, 0
        while True:
            rows = self.table.missing_docs(self.model_id, after_seq=after_seq, limit=size)
            if not rows:
                break
            after_seq = rows[-1][0]
            done += self._index_docs([doc for _, doc in rows], only_missing=False)
            if progress:
                progress(len(rows))
        self.sync(full=True)
        self.index.flush()
        # Indexes of other models are stale now (their vectors were replaced) and would keep
        # vectors of blocks erased since: delete them.
        for name in self.index.discard_other_models():
            log.info("deleted the %s index of another model (%s)", self.backend, name)
        return ReindexReport(self.model_id, done, before, time.monotonic() - started)

    def status(self) -> dict[str, Any]:
        counts = self.table.counts()
        runtime = getattr(self._embedder, "runtime", None)
        return {
            "model": self.model_id,
            "dim": self.dim,
            "runtime": runtime or self.settings.embedding_runtime,
            "backend": self.backend,
            "vectors": counts.get(self.model_id, 0),
            "missing": self.table.missing_count(self.model_id),
            "other_models": {m: n for m, n in counts.items() if m != self.model_id},
            "index": self._index.count() if self._index is not None else None,
        }

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                # Another process may have erased blocks this index still holds: drop them
                # before the index is saved, so an erased vector is never written back.
                try:
                    self.sync(full=True)
                except KianaError as exc:
                    log.warning("could not sync the vector index before closing (%s)", exc.code)
                finally:
                    self._index.close()
                    self._index = None
