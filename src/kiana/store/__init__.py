"""Storage: SQLite (default) and PostgreSQL behind one block repository."""

from kiana.store.blocks import BlockStore
from kiana.store.db import Database
from kiana.store.migrations import LATEST, MIGRATIONS, Migration, migrate
from kiana.store.types import BlockFilter, Device, Page, PutResult, SearchHit, StoreStats

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "BlockFilter",
    "BlockStore",
    "Database",
    "Device",
    "Migration",
    "Page",
    "PutResult",
    "SearchHit",
    "StoreStats",
    "migrate",
]
