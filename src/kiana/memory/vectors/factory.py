"""Open the configured vector index backend for a model."""

from __future__ import annotations

import logging

from kiana.config import Settings
from kiana.errors import ConfigError, VectorIndexError
from kiana.memory.embedding.registry import default_threads
from kiana.memory.vectors.base import SyncableIndex, slug
from kiana.store import Database

log = logging.getLogger("kiana.vectors")

BACKENDS = ("hnsw", "pgvector", "qdrant", "chroma")


def backend_name(settings: Settings, dialect: str) -> str:
    """The backend ``vectors.backend`` means here (``auto``: pgvector on PostgreSQL, else hnsw)."""
    name = settings.vector_backend
    if name == "auto":
        return "pgvector" if dialect == "postgres" else "hnsw"
    if name not in BACKENDS:
        raise ConfigError(f"vectors.backend must be auto or one of {', '.join(BACKENDS)}")
    if name == "pgvector" and dialect != "postgres":
        raise ConfigError("vectors.backend = pgvector needs storage.database_url on PostgreSQL")
    return name


def shared(settings: Settings, name: str) -> bool:
    """Whether every process sees the same index at once (so writes go there directly)."""
    return name == "pgvector" or (name == "qdrant" and bool(settings.qdrant_url))


def open_index(settings: Settings, db: Database, model_id: str, dim: int) -> SyncableIndex:
    name = backend_name(settings, db.dialect)
    if name == "pgvector":
        from kiana.memory.vectors.pgvector import PgVectorIndex

        try:
            return PgVectorIndex(db, model_id, dim)
        except VectorIndexError as exc:
            if settings.vector_backend != "auto":
                raise
            log.warning("pgvector unavailable (%s); using the hnsw backend instead", exc.message)
            name = "hnsw"
    if name == "qdrant":
        from kiana.memory.vectors.qdrant import QdrantIndex

        return QdrantIndex(model_id, dim, path=settings.home / "qdrant", url=settings.qdrant_url)
    if name == "chroma":
        from kiana.memory.vectors.chroma import ChromaIndex

        return ChromaIndex(settings.home / "chroma", model_id, dim)
    from kiana.memory.vectors.hnsw import HnswIndex

    return HnswIndex(settings.home / "vectors", model_id, dim, threads=default_threads())


def index_exists(settings: Settings, dialect: str, model_id: str) -> bool:
    """Whether an index may hold vectors, judged without opening it."""
    try:
        name = backend_name(settings, dialect)
    except ConfigError:
        return False
    if shared(settings, name):
        return True
    if name == "hnsw" or (name == "pgvector"):
        return (settings.home / "vectors" / f"{slug(model_id)}.json").exists()
    return (settings.home / name).exists()


__all__ = ["BACKENDS", "VectorIndexError", "backend_name", "index_exists", "open_index", "shared"]
