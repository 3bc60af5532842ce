"""Versioned schema migrations that run on SQLite and PostgreSQL.

Each migration has SQL for both dialects and runs in its own transaction.
Before a pending migration touches an existing, non-empty SQLite file, the
file is copied with SQLite's online backup API to ``<home>/backups/``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiana.errors import MigrationError
from kiana.store.db import Conn, Database


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_COMMON_TABLES = """
CREATE TABLE mind_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    sign_key TEXT NOT NULL,
    box_key TEXT NOT NULL,
    role TEXT NOT NULL,
    person TEXT NOT NULL,
    name TEXT NOT NULL,
    added BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE tombstones (
    id TEXT PRIMARY KEY,
    erases TEXT NOT NULL,
    author TEXT NOT NULL,
    created BIGINT NOT NULL,
    reason TEXT NOT NULL,
    sig TEXT NOT NULL,
    stored BIGINT NOT NULL
);
CREATE INDEX tombstones_erases ON tombstones (erases);
CREATE TABLE block_tags (
    tag TEXT NOT NULL,
    block_id TEXT NOT NULL,
    PRIMARY KEY (tag, block_id)
);
CREATE INDEX block_tags_block ON block_tags (block_id);
"""

_BLOCK_COLUMNS = """
    id TEXT NOT NULL UNIQUE,
    v INTEGER NOT NULL,
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    body TEXT NOT NULL,
    meta TEXT NOT NULL,
    title TEXT NOT NULL,
    tags_text TEXT NOT NULL,
    source TEXT NOT NULL,
    author TEXT NOT NULL,
    created BIGINT NOT NULL,
    refs TEXT NOT NULL,
    sig TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    erased INTEGER NOT NULL DEFAULT 0,
    stored BIGINT NOT NULL
"""

_BLOCK_INDEXES = """
CREATE INDEX blocks_created ON blocks (created, seq);
CREATE INDEX blocks_kind ON blocks (kind, created);
CREATE INDEX blocks_author ON blocks (author, created);
CREATE INDEX blocks_body_hash ON blocks (body_hash);
"""


_REFS_AND_CONVERSATIONS = """
CREATE TABLE block_refs (
    target TEXT NOT NULL,
    rel TEXT NOT NULL,
    block_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (target, rel, block_id)
);
CREATE INDEX block_refs_block ON block_refs (block_id);
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE conversation_turns (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    citations TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
"""


def _split(sql: str) -> tuple[str, ...]:
    """Split on ``;`` at line ends, keeping ``BEGIN ... END;`` trigger bodies whole."""
    out: list[str] = []
    current: list[str] = []
    depth = 0
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        current.append(line)
        if stripped.upper().endswith(" BEGIN"):
            depth += 1
        if stripped.endswith(";"):
            if depth and stripped.upper() == "END;":
                depth -= 1
            if not depth:
                out.append("\n".join(current).strip().rstrip(";"))
                current = []
    if current:
        out.append("\n".join(current).strip().rstrip(";"))
    return tuple(out)


_EMBEDDINGS_TABLE = """
CREATE TABLE embeddings (
    block_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector {blob} NOT NULL,
    stored BIGINT NOT NULL
)"""
_EMBEDDINGS_INDEX = "CREATE INDEX embeddings_model ON embeddings (model, stored)"


_CRDT_OPS = """
CREATE TABLE crdt_ops (
    replica TEXT NOT NULL,
    seq BIGINT NOT NULL,
    lamport BIGINT NOT NULL,
    op TEXT NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (replica, seq)
);
"""

_CRDT_PROOFS = """
CREATE TABLE crdt_proofs (
    replica TEXT NOT NULL,
    seq BIGINT NOT NULL,
    lamport BIGINT NOT NULL,
    op TEXT NOT NULL,
    sig TEXT,
    PRIMARY KEY (replica, seq)
);
"""

_MESH_TABLES = """
ALTER TABLE devices ADD COLUMN revoked BIGINT;
ALTER TABLE devices ADD COLUMN revoke_record TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN last_seen BIGINT;
CREATE TABLE mesh_outbox (
    msg_id TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try BIGINT NOT NULL,
    envelope {blob} NOT NULL
);
CREATE INDEX mesh_outbox_peer ON mesh_outbox (peer, created);
CREATE INDEX mesh_outbox_due ON mesh_outbox (peer, next_try);
CREATE INDEX mesh_outbox_expires ON mesh_outbox (expires);
CREATE TABLE mesh_inbox (
    msg_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created BIGINT NOT NULL,
    received BIGINT NOT NULL,
    body {blob} NOT NULL,
    consumed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX mesh_inbox_pending ON mesh_inbox (consumed, received);
CREATE TABLE mesh_seen (
    sender TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (sender, msg_id)
);
CREATE TABLE mesh_channels (
    peer TEXT NOT NULL,
    channel TEXT NOT NULL,
    direction TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    PRIMARY KEY (peer, channel, direction)
);
CREATE TABLE mesh_addresses (
    address TEXT PRIMARY KEY,
    device_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    added BIGINT NOT NULL
);
"""


_LEDGER_TABLES = """
CREATE TABLE ledger_blocks (
    hash TEXT PRIMARY KEY,
    height BIGINT NOT NULL,
    parent TEXT NOT NULL,
    data TEXT NOT NULL,
    total_difficulty BIGINT NOT NULL
);
CREATE INDEX ledger_blocks_height ON ledger_blocks (height);
CREATE TABLE ledger_pending (
    record_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    data TEXT NOT NULL
);
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "blocks, tombstones, devices, keyword index",
        sqlite=_split(
            _COMMON_TABLES
            + f"CREATE TABLE blocks (seq INTEGER PRIMARY KEY, {_BLOCK_COLUMNS});"
            + _BLOCK_INDEXES
            + """
            CREATE VIRTUAL TABLE blocks_fts USING fts5(
                title, body, tags_text,
                content='blocks', content_rowid='seq',
                tokenize='unicode61 remove_diacritics 2'
            );
            CREATE TRIGGER blocks_fts_insert AFTER INSERT ON blocks BEGIN
                INSERT INTO blocks_fts (rowid, title, body, tags_text)
                VALUES (new.seq, new.title, new.body, new.tags_text);
            END;
            CREATE TRIGGER blocks_fts_update AFTER UPDATE ON blocks BEGIN
                INSERT INTO blocks_fts (blocks_fts, rowid, title, body, tags_text)
                VALUES ('delete', old.seq, old.title, old.body, old.tags_text);
                INSERT INTO blocks_fts (rowid, title, body, tags_text)
                VALUES (new.seq, new.title, new.body, new.tags_text);
            END;
            """
        ),
        postgres=_split(
            _COMMON_TABLES
            + f"CREATE TABLE blocks (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {_BLOCK_COLUMNS},"
            + " tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple',"
            + " title || ' ' || body || ' ' || tags_text)) STORED);"
            + _BLOCK_INDEXES
            + "CREATE INDEX blocks_tsv ON blocks USING GIN (tsv);"
        ),
    ),
    Migration(
        2,
        "keyword index on text lower-cased by KI_ana, not by the database locale",
        # SQLite keeps the column empty: FTS5's unicode61 tokenizer folds case itself.
        sqlite=("ALTER TABLE blocks ADD COLUMN search_text TEXT NOT NULL DEFAULT ''",),
        postgres=(
            "ALTER TABLE blocks ADD COLUMN search_text TEXT NOT NULL DEFAULT ''",
            "UPDATE blocks SET search_text = lower(title || ' ' || body || ' ' || tags_text)"
            " WHERE erased = 0",
            "ALTER TABLE blocks DROP COLUMN tsv",
            "ALTER TABLE blocks ADD COLUMN tsv tsvector GENERATED ALWAYS AS"
            " (to_tsvector('simple', search_text)) STORED",
            "CREATE INDEX blocks_tsv ON blocks USING GIN (tsv)",
        ),
    ),
    Migration(
        3,
        "reference index (supersedes, ...) and local conversations",
        sqlite=(
            *_split(_REFS_AND_CONVERSATIONS),
            "INSERT INTO block_refs (target, rel, block_id, created)"
            " SELECT json_extract(r.value, '$.id'), json_extract(r.value, '$.rel'), b.id, b.created"
            " FROM blocks b, json_each(b.refs) r WHERE b.erased = 0",
        ),
        postgres=(
            *_split(_REFS_AND_CONVERSATIONS),
            "INSERT INTO block_refs (target, rel, block_id, created)"
            " SELECT r->>'id', r->>'rel', b.id, b.created"
            " FROM blocks b, jsonb_array_elements(b.refs::jsonb) r WHERE b.erased = 0",
        ),
    ),
    Migration(
        4,
        "embeddings: one vector per block (model id, dimension, float32 bytes), gone on erasure",
        # The database is the source of truth for vectors; vector indexes are caches.
        # Erasing a block deletes its vector in the same transaction, whatever code erased it.
        sqlite=(
            _EMBEDDINGS_TABLE.format(blob="BLOB"),
            _EMBEDDINGS_INDEX,
            "CREATE TRIGGER embeddings_erase AFTER UPDATE OF erased ON blocks"
            " WHEN new.erased = 1 BEGIN"
            " DELETE FROM embeddings WHERE block_id = new.id; END",
        ),
        postgres=(
            _EMBEDDINGS_TABLE.format(blob="BYTEA"),
            _EMBEDDINGS_INDEX,
            "CREATE FUNCTION kiana_embeddings_erase() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN DELETE FROM embeddings WHERE block_id = NEW.id; RETURN NEW; END $$",
            "CREATE TRIGGER embeddings_erase AFTER UPDATE OF erased ON blocks FOR EACH ROW"
            " WHEN (NEW.erased = 1) EXECUTE FUNCTION kiana_embeddings_erase()",
        ),
    ),
    Migration(
        5,
        "mesh: revocation and last-seen on devices, durable outbox/inbox, dedup, peer addresses",
        sqlite=_split(_MESH_TABLES.format(blob="BLOB")),
        postgres=_split(_MESH_TABLES.format(blob="BYTEA")),
    ),
    Migration(
        6,
        "shared state: CRDT op log",
        # One row per op of kiana.sync.crdt: held = 1 while an earlier op of the
        # same replica is missing. The state is rebuilt from this log on open.
        sqlite=_split(_CRDT_OPS),
        postgres=_split(_CRDT_OPS),
    ),
    Migration(
        7,
        "ledger: sealed blocks (every branch, with total difficulty) and the pending pool",
        # kiana.ledger.store: blocks are canonical JSON, verified again from genesis on open.
        sqlite=_split(_LEDGER_TABLES),
        postgres=_split(_LEDGER_TABLES),
    ),
    Migration(
        8,
        "shared state: each CRDT op's Ed25519 signature",
        # kiana.sync.crdt_store: 128 hex characters; NULL for ops stored before. On open,
        # SharedState signs its own replica's NULL rows and deletes other replicas' (their
        # devices send them again, signed).
        sqlite=("ALTER TABLE crdt_ops ADD COLUMN sig TEXT",),
        postgres=("ALTER TABLE crdt_ops ADD COLUMN sig TEXT",),
    ),
    Migration(
        9,
        "shared state: proofs of equivocation (a second op signed for one dot)",
        # kiana.sync.crdt_store: per equivocated dot, the op not kept (crdt_ops holds the
        # one kept: the lower SHA-256 of the signed encoding). Sent on to peers.
        sqlite=_split(_CRDT_PROOFS),
        postgres=_split(_CRDT_PROOFS),
    ),
)

LATEST = MIGRATIONS[-1].version


def current_version(db: Database) -> int:
    def query(conn: Conn) -> int:
        if db.dialect == "sqlite":
            exists = conn.one(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
            )
        else:
            exists = conn.one(
                "SELECT 1 FROM information_schema.tables WHERE table_name='schema_version'"
                " AND table_schema = current_schema()"
            )
        if not exists:
            return 0
        row = conn.one("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    return db.read(query)


def migrate(
    db: Database,
    *,
    backup_dir: Path | None = None,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[int]:
    """Apply pending migrations; return the versions applied."""
    latest = migrations[-1].version if migrations else 0
    version = current_version(db)
    if version > latest:
        raise MigrationError(
            f"the database has schema version {version}, newer than this KI_ana supports "
            f"({latest}); upgrade KI_ana instead of downgrading the data"
        )
    pending = [m for m in migrations if m.version > version]
    if not pending:
        return []
    if db.dialect == "sqlite" and version > 0 and backup_dir is not None:
        backup_sqlite(db, backup_dir, label=f"before-v{pending[0].version}")
    applied = []
    for m in pending:
        statements = m.sqlite if db.dialect == "sqlite" else m.postgres

        def apply(conn: Conn, m: Migration = m, statements: tuple[str, ...] = statements) -> None:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL, name TEXT NOT NULL)"
            )
            for sql in statements:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_version (version, applied, name) VALUES (?, ?, ?)",
                (m.version, int(time.time() * 1000), m.name),
            )

        try:
            db.write(apply)
        except Exception as exc:
            raise MigrationError(f"migration {m.version} ({m.name}) failed: {exc}") from exc
        applied.append(m.version)
    return applied


def backup_sqlite(db: Database, backup_dir: Path, *, label: str) -> Path:
    """Copy a consistent snapshot of the SQLite file into ``backup_dir``."""
    assert db.path is not None
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = backup_dir / f"{db.path.stem}-{label}-{stamp}.db"
    src = sqlite3.connect(db.path)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise MigrationError(f"could not back up {db.path} before migrating: {exc}") from exc
    finally:
        src.close()
    return target
