"""Vector memory end to end: the embeddings table (SQLite and PostgreSQL), the service,
the Node hooks, rebuilding indexes from the database, and never mixing models.

Real MiniLM (ONNX), real hnswlib, Qdrant local mode, ChromaDB and pgvector.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import BlockFactory, device_for
from kiana.config import Settings, load_settings
from kiana.errors import EmbeddingModelError
from kiana.identity import DeviceKeys
from kiana.memory.embedder import Embedder, Vectors
from kiana.memory.index_service import VectorMemory
from kiana.memory.vectors.base import SyncableIndex
from kiana.memory.vectors.table import EmbeddingTable, from_bytes
from kiana.node import Node
from kiana.store import LATEST, MIGRATIONS, BlockFilter, BlockStore, Database, migrate
from kiana.transfer import export_lines, import_lines

MODEL = "all-minilm-l6-v2"
FACTS = [
    "Mum's birthday is 14 March",
    "The boiler service is on 3 June",
    "Paris is the capital of France",
    "The spare key is under the blue flower pot",
    "Dentist appointment moved to Friday at 10",
    "Our wifi password is on the fridge",
    "The car needs new winter tyres in October",
    "Grandpa likes his tea with honey",
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    from kiana.memory.embedding.loader import load_embedder

    return load_embedder(
        load_settings(home=tmp_path_factory.mktemp("h"), environ={}), runtime="onnx"
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    return load_settings(home=tmp_path / "home", environ={}, database_url=url)


NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(embedder: Embedder) -> Iterator[NodeFactory]:
    """Nodes whose vector memory shares the module's embedder (no model load per test)."""
    nodes: list[Node] = []

    def make(settings: Settings, *, init: bool = True, **kwargs: object) -> Node:
        node = Node.init(settings, mind_name="T") if init else Node.open(settings)
        node.vectors = VectorMemory(
            node.store, settings, embedder=embedder, check_interval=0, **kwargs
        )  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def ids(hits: Sequence[tuple[str, float]]) -> list[str]:
    return [h[0] for h in hits]


# -- the table and its migration -------------------------------------------------------


def test_migration_adds_embeddings_table_and_erase_trigger(
    store_url: str, keys: DeviceKeys, new_block: BlockFactory, new_tombstone: Callable[..., object]
) -> None:
    db = Database(store_url)
    try:
        assert migrate(db, migrations=MIGRATIONS[:3]) == [1, 2, 3]
        store = BlockStore(db)
        store.add_device(device_for(keys))
        kept, erased = new_block("kept"), new_block("to be erased")
        # verified=True: this store object runs on a v3 schema, older than its own code
        store.put_many([kept, erased], verified=True)
        assert migrate(db) == list(range(4, LATEST + 1))  # the upgrade path, with blocks stored
        table = EmbeddingTable(db)
        vec = np.linspace(-1, 1, 384, dtype=np.float32)
        assert table.put(MODEL, 384, [(kept.id, vec), (erased.id, vec), ("0" * 64, vec)]) == {
            kept.id,
            erased.id,
        }
        row = db.read(
            lambda c: c.one(
                "SELECT model, dim, vector FROM embeddings WHERE block_id = ?", (kept.id,)
            )
        )
        assert row is not None and (row[0], row[1]) == (MODEL, 384)
        assert bytes(row[2]) == vec.astype("<f4").tobytes() and np.array_equal(
            from_bytes(row[2], 384), vec
        )
        store.erase(new_tombstone(erased.id))  # the trigger deletes the vector with the content
        assert set(table.ids(MODEL)) == {kept.id}
        assert table.put(MODEL, 384, [(erased.id, vec)]) == set()  # never for an erased block
        assert table.missing_count(MODEL) == 0 and table.missing_count("other") == 1
    finally:
        db.close()


# -- the service through the Node ------------------------------------------------------


def test_node_writes_keep_vectors_in_step(
    settings: Settings, make_node: NodeFactory, tmp_path: Path
) -> None:
    node = make_node(settings)
    assert node.vectors.backend == ("pgvector" if settings.database_url else "hnsw")
    mum = node.remember(FACTS[0], tags=["family"]).block
    for fact in FACTS[1:4]:
        node.remember(fact, kind="note")
    doc = tmp_path / "car.md"
    doc.write_text(
        "# Car\n\nThe car needs new winter tyres in October.\n\n# Garden\n\nCut the roses in March.\n"
    )
    assert node.add_files([doc], tags=["docs"]).chunks_stored == 2
    status = node.vectors.status()
    assert (status["vectors"], status["missing"], status["model"], status["dim"]) == (
        6,
        0,
        MODEL,
        384,
    )

    assert ids(node.vectors.search("When was my mother born?", 1)) == [mum.id]
    hits = node.vectors.search("roses", 3, BlockFilter(kind="chunk", tag="docs"))
    assert len(hits) == 2 and node.get(hits[0][0]).body.startswith("Cut the roses")
    assert node.vectors.search("anything", 5, BlockFilter(tag="nope")) == []

    node.forget(mum.id[:10])
    assert mum.id not in ids(node.vectors.search("When was my mother born?", 10))
    assert node.vectors.status()["vectors"] == 5 and node.vectors.index.count() == 5

    # Blocks signed elsewhere (API, import) get vectors too.
    record = node.new_block(body=FACTS[4], kind="fact").to_dict()
    block, result = node.put_signed(record)
    assert result == "stored" and ids(node.vectors.search("dentist", 1)) == [block.id]


def test_import_embeds_and_erases(make_node: NodeFactory, tmp_path: Path) -> None:
    source = make_node(load_settings(home=tmp_path / "a", environ={}))
    blocks = [source.remember(f).block for f in FACTS]
    source.forget(blocks[1].id)
    lines = list(export_lines(source))
    # A second home of the same mind (same keys), empty database.
    target_home = tmp_path / "b"
    target_home.mkdir()
    for name in ("keys", "mind.json", "api-token", "config.toml"):
        src = tmp_path / "a" / name
        if src.is_dir():
            import shutil

            shutil.copytree(src, target_home / name)
        elif src.exists():
            (target_home / name).write_bytes(src.read_bytes())
    target = make_node(load_settings(home=target_home, environ={}), init=False)
    report = import_lines(target, lines)
    assert report.ok and report.stored == len(FACTS) - 1
    status = target.vectors.status()
    assert (status["vectors"], status["missing"]) == (len(FACTS) - 1, 0)
    assert ids(target.vectors.search("key under the flower pot", 1)) == [blocks[3].id]
    assert blocks[1].id not in ids(target.vectors.search(FACTS[1], 10))


class BrokenEmbedder:
    model_id, dim = MODEL, 384

    def embed(self, texts: Sequence[str]) -> Vectors:
        raise EmbeddingModelError("the model is not available right now")


def test_embedding_failure_never_loses_the_block(
    settings: Settings, make_node: NodeFactory, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(settings)
    node.vectors = VectorMemory(node.store, settings, embedder=BrokenEmbedder())
    with caplog.at_level(logging.WARNING, logger="kiana.node"):
        block = node.remember(FACTS[0]).block
    assert node.get(block.id).body == FACTS[0]
    assert "model_unavailable" in caplog.text and FACTS[0] not in caplog.text  # no content in logs
    assert node.vectors.status()["missing"] == 1
    node.vectors = VectorMemory(node.store, settings, embedder=embedder)
    seen: list[int] = []
    report = node.vectors.reindex(seen.append)
    assert (report.embedded, report.missing_before, sum(seen)) == (1, 1, 1)
    assert node.vectors.status()["missing"] == 0


def test_without_the_embedding_stack_writes_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiana.memory.embedding import loader

    monkeypatch.setattr(loader, "embedding_available", lambda settings: False)
    with Node.init(load_settings(home=tmp_path / "h", environ={}), mind_name="T") as node:
        node.remember(FACTS[0])
        node.forget(node.remember(FACTS[1]).block.id)
        assert node.auto_embed is False
        assert EmbeddingTable(node.store.db).counts() == {}


def test_reindex_and_a_changed_model_never_mix(settings: Settings, make_node: NodeFactory) -> None:
    node = make_node(settings)
    node.auto_embed = False
    blocks = [node.remember(f).block for f in FACTS]
    assert node.vectors.status()["missing"] == len(FACTS)
    assert node.vectors.search("birthday", 3) == []
    progress: list[int] = []
    report = node.vectors.reindex(progress.append, batch=3)
    assert (report.embedded, sum(progress), len(progress)) == (len(FACTS), len(FACTS), 3)
    best = ids(node.vectors.search("When was my mother born?", 3))
    assert best[0] == blocks[0].id

    # Vectors of another model (e.g. written before the model changed) replace two rows.
    table = node.vectors.table
    old = np.ones(384, dtype=np.float32) / np.sqrt(384)
    table.put("old-model", 384, [(blocks[0].id, old), (blocks[1].id, old)])
    status = node.vectors.status()
    assert status["other_models"] == {"old-model": 2} and status["missing"] == 2
    # Searching with the configured model never uses them, though the index still has
    # this model's vector for those blocks from before.
    assert blocks[0].id not in ids(node.vectors.search("When was my mother born?", 10))
    stale = _old_model_index(node, settings)
    stale.add(table.items("old-model", 384, [blocks[0].id]))
    stale.close()
    node.vectors.reindex()
    assert _old_model_index(node, settings).count() == 0  # the old model's index was deleted
    status = node.vectors.status()
    assert (
        status["other_models"] == {} and status["missing"] == 0 and status["vectors"] == len(FACTS)
    )
    assert ids(node.vectors.search("When was my mother born?", 1)) == [blocks[0].id]


def _old_model_index(node: Node, settings: Settings) -> SyncableIndex:
    if settings.database_url:
        from kiana.memory.vectors.pgvector import PgVectorIndex

        return PgVectorIndex(node.store.db, "old-model", 384)
    from kiana.memory.vectors.hnsw import HnswIndex

    return HnswIndex(settings.home / "vectors", "old-model", 384)


# -- rebuilding indexes from the database ---------------------------------------------------


def _snapshot(node: Node) -> list[list[str]]:
    queries = ["birthday", "heating", "keys", "car tyres"]
    return [
        ids(node.vectors.search(q, 5, f)) for q in queries for f in (None, BlockFilter(kind="note"))
    ]


@pytest.mark.parametrize("damage", ["delete", "corrupt", "other-dim"])
def test_hnsw_rebuilt_from_database(
    tmp_path: Path,
    make_node: NodeFactory,
    embedder: Embedder,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(home=tmp_path / "h", environ={})
    node = make_node(settings)
    for i, fact in enumerate(FACTS):
        node.remember(fact, kind="note" if i % 2 else "fact")
    before = _snapshot(node)
    node.close()
    folder = settings.home / "vectors"
    (sidecar,) = folder.glob("*.json")
    (binary,) = folder.glob("*.bin")
    if damage == "delete":
        binary.unlink()
        sidecar.unlink()
    elif damage == "corrupt":
        data = bytearray(binary.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 32] = b"\xff" * 32
        binary.write_bytes(bytes(data))
    else:
        meta = json.loads(sidecar.read_text())
        meta["dim"] = 768
        sidecar.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="kiana.vectors"):
        again = make_node(settings, init=False)
        assert _snapshot(again) == before
    if damage != "delete":
        assert "rebuilding" in caplog.text
    assert again.vectors.index.count() == len(FACTS)
    again.close()
    (fresh,) = folder.glob("*.bin")  # rebuilt and saved
    assert fresh.name != binary.name or damage == "delete"


@pytest.mark.parametrize(
    "backend", ["qdrant", "chroma", pytest.param("pgvector", marks=pytest.mark.postgres)]
)
def test_other_backends_resync_from_database(
    backend: str, tmp_path: Path, make_node: NodeFactory, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("postgres_url")) if backend == "pgvector" else ""
    settings = load_settings(
        home=tmp_path / "h", environ={}, database_url=url, vector_backend=backend
    )
    node = make_node(settings)
    blocks = [node.remember(f, kind="note" if i % 2 else "fact").block for i, f in enumerate(FACTS)]
    assert node.vectors.backend == backend
    before = _snapshot(node)
    index = node.vectors.index
    index.remove([b.id for b in blocks[:3]])  # the index lost some vectors...
    stray = node.vectors.table.items(MODEL, 384, [blocks[4].id])[0]
    index.add(
        [type(stray)("e" * 64, stray.vector, "fact", "shared", "x")]
    )  # ...and holds one too many
    node.close()
    again = make_node(settings, init=False)
    assert again.vectors.index.ids() == {b.id for b in blocks}
    assert _snapshot(again) == before


def test_another_process_writes_and_erases(
    tmp_path: Path, embedder: Embedder, make_node: NodeFactory
) -> None:
    """Two services on one database, as 'kiana serve' and a 'kiana remember' beside it."""
    settings = load_settings(home=tmp_path / "h", environ={})
    server = make_node(settings)
    server.remember(FACTS[1])
    assert server.vectors.search("boiler", 1)  # the server's index is now loaded
    kept = server.remember(FACTS[2]).block.id
    assert server.vectors.sync() == (0, 0)  # its own write went straight into the index
    with Node.open(settings) as cli:
        cli.vectors = VectorMemory(cli.store, settings, embedder=embedder)
        block = cli.remember(FACTS[0]).block
        assert not cli.vectors.index_loaded  # one small write: database only, index left alone
    assert ids(server.vectors.search("When was my mother born?", 1)) == [block.id]
    with Node.open(settings) as cli:
        cli.store.erase(_tomb(cli, block.id), verified=True)  # no Node hook: another code path
    assert block.id not in ids(server.vectors.search("When was my mother born?", 5))

    # Erased elsewhere while the server holds it, no search in between: closing the
    # server's vector memory must not write the erased vector back to disk.
    boiler = server.vectors.search("boiler", 1)[0][0]
    with Node.open(settings) as cli:
        cli.store.erase(_tomb(cli, boiler), verified=True)
    server.vectors.close()
    from kiana.memory.vectors.hnsw import HnswIndex

    assert list((settings.home / "vectors").glob("*.json"))  # saved on close
    on_disk = HnswIndex(settings.home / "vectors", MODEL, 384)
    assert on_disk.ids() == {kept}  # neither erased block


def _tomb(node: Node, block_id: str) -> object:
    from kiana.blocks import make_tombstone
    from kiana.node import now_ms

    return make_tombstone(node.keys.signing, node.device_id, erases=block_id, created=now_ms())


# -- nothing leaves the machine ----------------------------------------------------------------


def test_chroma_makes_no_network_attempt(tmp_path: Path) -> None:
    code = """
import sys, json
events = []
def hook(event, args):
    if event.startswith("socket.") and event not in ("socket.__new__",):
        events.append([event, repr(args)[:200]])
sys.addaudithook(hook)
import socket
socket.getaddrinfo("127.0.0.1", 9)  # positive control: the hook sees lookups
control = len(events)
import numpy as np
from pathlib import Path
from kiana.memory.vectors.base import VectorItem
from kiana.memory.vectors.chroma import ChromaIndex
index = ChromaIndex(Path(sys.argv[1]), "all-minilm-l6-v2", 384)
vecs = np.eye(384, dtype=np.float32)[:5]
index.add([VectorItem(f"{i:064x}", v, "fact", "shared", "dev", ("t",)) for i, v in enumerate(vecs)])
assert [h.block_id for h in index.search(vecs[2], 1)] == [f"{2:064x}"]
index.close()
print(json.dumps({"control": events[:control], "events": events[control:]}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIANA_", "CHROMA_"))}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "chroma")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(e[0] == "socket.getaddrinfo" for e in seen["control"])
    events = seen["events"]
    remote = [
        e
        for e in events
        if e[0] in {"socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.gethostbyname"}
    ]
    assert remote == [], remote
