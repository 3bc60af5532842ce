"""Database connections for SQLite and PostgreSQL behind one small interface.

One writer, many readers (datasette's pattern): every write runs inside
``Database.write(fn)`` on a single writer connection under a lock, in a
``BEGIN IMMEDIATE`` transaction on SQLite; reads run on per-thread
connections. Nothing here is async: the async layer (``kiana.store.aio``)
moves calls onto threads so the event loop never blocks.

SQL is written with ``?`` placeholders; the PostgreSQL adapter rewrites them
to ``%s``. Keep literal question marks out of SQL text.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from kiana.errors import DatabaseUnavailableError, StoreError

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]
INSERT_ROWS = 50  # rows per multi-row INSERT (16 values each: far below either limit)


class Cursor(Protocol):
    """The subset of a DB-API cursor the repositories use."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class Conn:
    """A connection wrapper with dialect-neutral ``execute`` helpers."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cur: Cursor = self.raw.cursor()
        cur.execute(self._sql(sql), params)
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur: Cursor = self.raw.cursor()
            cur.executemany(self._sql(sql), rows)

    def insert_rows(
        self, sql: str, one: str, rows: Sequence[Sequence[Any]], per: int = INSERT_ROWS
    ) -> None:
        """``sql`` with ``{}`` for ``VALUES (..), (..), ...``: ``per`` rows a statement.

        One statement for many rows, where ``executemany`` runs one per row: the SQLite
        driver lets go of the GIL for each, and each time it wants it back it may wait for
        another thread's Python (sync checks signatures on a second thread meanwhile).
        """
        for start in range(0, len(rows), per):
            part = rows[start : start + per]
            self.execute(sql.format(", ".join([one] * len(part))), [v for r in part for v in r])

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]


class Database:
    """Owns the writer connection and the per-thread reader connections."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._reads_done = threading.Condition()
        self._active_reads = 0
        if url.startswith("sqlite:///"):
            self.dialect: Dialect = "sqlite"
            self.path: Path | None = Path(url.removeprefix("sqlite:///"))
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgres"
            self.path = None
        else:
            raise StoreError(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")
        self._writer = Conn(self._connect(writer=True), self.dialect)

    # -- connections -------------------------------------------------------

    def _connect(self, *, writer: bool) -> Any:
        if self.dialect == "sqlite":
            return self._connect_sqlite(writer=writer)
        return self._connect_postgres(writer=writer)

    def _connect_sqlite(self, *, writer: bool) -> sqlite3.Connection:
        assert self.path is not None
        if writer:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._connect_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
                cached_statements=256,
            )
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA foreign_keys = ON")
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"could not switch {self.path} to WAL mode")
                conn.execute("PRAGMA synchronous = NORMAL")
            else:
                conn.execute("PRAGMA query_only = 1")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    def _connect_postgres(self, *, writer: bool) -> Any:
        try:
            import psycopg
        except ImportError as exc:
            raise DatabaseUnavailableError(
                "PostgreSQL support is not installed; run: pip install 'kiana[postgres]'"
            ) from exc
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=int(self._connect_timeout)
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        return conn

    def _reader(self) -> Conn:
        conn: Conn | None = getattr(self._local, "reader", None)
        if conn is None:
            if self._closed:
                raise StoreError("database is closed")
            raw = self._connect(writer=False)
            with self._readers_lock:
                self._readers.append(raw)
            conn = Conn(raw, self.dialect)
            self._local.reader = conn
        return conn

    # -- public ------------------------------------------------------------

    def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one write transaction; roll back on any error."""
        with self._write_lock, self._transaction(self._writer):
            return fn(self._writer)

    def read(self, fn: Callable[[Conn], T]) -> T:
        with self._reads_done:
            if self._closed:
                raise StoreError("database is closed")
            self._active_reads += 1
        try:
            return self._translate(lambda: fn(self._reader()))
        finally:
            with self._reads_done:
                self._active_reads -= 1
                self._reads_done.notify_all()

    @contextmanager
    def _transaction(self, conn: Conn) -> Iterator[None]:
        if self._closed:
            raise StoreError("database is closed")
        begin = "BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN"
        try:
            conn.raw.execute(begin)
        except Exception as exc:
            raise self._wrap(exc) from exc
        try:
            yield
        except BaseException as exc:
            with suppress(Exception):  # the original error is what matters
                conn.raw.execute("ROLLBACK")
            if isinstance(exc, Exception) and _is_driver_error(exc):
                raise self._wrap(exc) from exc
            raise
        else:
            try:
                conn.raw.execute("COMMIT")
            except Exception as exc:
                # SQLite can leave the transaction open when COMMIT fails (deferred
                # constraint, I/O error); without this every later write would fail.
                with suppress(Exception):
                    conn.raw.execute("ROLLBACK")
                raise self._wrap(exc) from exc

    def _translate(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:
            if _is_driver_error(exc):
                raise self._wrap(exc) from exc
            raise

    def _wrap(self, exc: Exception) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "disk" in text.lower() and "full" in text.lower():
            return StoreError(f"the disk is full; nothing was written ({text})")
        return StoreError(f"database error: {text}")

    def close(self) -> None:
        with self._reads_done:
            if self._closed:
                return
            self._closed = True
            # A reader still running on another thread keeps its connection until it is
            # done: closing a SQLite connection under a running statement crashes.
            self._reads_done.wait_for(lambda: self._active_reads == 0, timeout=30)
        with self._write_lock:
            self._writer.raw.close()
        with self._readers_lock:
            for raw in self._readers:
                with suppress(Exception):  # closing other threads' connections: best effort
                    raw.close()
            self._readers.clear()


def _is_driver_error(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    module = type(exc).__module__
    return module.startswith("psycopg")
