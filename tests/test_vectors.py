"""One conformance suite for every VectorIndex backend, on real MiniLM embeddings.

hnsw (twice: exact scoring of small filtered sets, and hnswlib's filtered graph
search), Qdrant in local mode, ChromaDB and pgvector must all: order results as exact
cosine does, treat add as an idempotent upsert, honour removal and every filter,
count, survive close/reopen, and search an empty index. The database side (the
``embeddings`` table, the service, the Node hooks) is tested in test_vector_memory.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kiana.memory.embedder import Embedder
from kiana.memory.vectors.base import SyncableIndex, VectorItem, matches
from kiana.store import BlockFilter, BlockStore

MODEL = "all-minilm-l6-v2"
DIM = 384
SUBJECTS = ["My sister", "The plumber", "Our neighbour", "The dentist", "Grandpa", "The bank"]
ACTIONS = [
    "called about the invoice",
    "is coming on Tuesday",
    "moved to Hamburg last spring",
    "wants the spare key back",
    "recommended a new recipe for bread",
    "sent photos from the holiday in Portugal",
    "asked about the broken heating",
    "changed the appointment to Friday",
]
KINDS = ["fact", "note", "chunk", "conversation"]
TAGS = ["family", "house", "money", "health"]
AUTHORS = ["dev-aaaa", "dev-bbbb"]
QUERIES = [
    "When does the plumber come?",
    "bread recipe",
    "heating is broken",
    "holiday pictures",
    "who lives in Hamburg now",
]


def make_items(vectors: npt.NDArray[np.float32]) -> list[VectorItem]:
    items = []
    for i, vec in enumerate(vectors):
        tags = tuple(t for j, t in enumerate(TAGS) if (i >> j) & 1 and (i + j) % 3)
        items.append(
            VectorItem(
                block_id=f"{i:064x}",
                vector=vec,
                kind=KINDS[i % len(KINDS)],
                scope="private" if i % 5 == 0 else "shared",
                author=AUTHORS[(i // 3) % 2],
                tags=tags,
                created=1_700_000_000_000 + i * 1000,
            )
        )
    return items


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    from kiana.config import load_settings
    from kiana.memory.embedding.loader import load_embedder

    return load_embedder(
        load_settings(home=tmp_path_factory.mktemp("h"), environ={}), runtime="onnx"
    )


@pytest.fixture(scope="module")
def corpus(embedder: Embedder) -> list[VectorItem]:
    texts = [f"{s} {a}." for s, a in itertools.product(SUBJECTS, ACTIONS)]  # 48
    texts += [
        f"{s} {a}, said {t}."
        for (s, a), t in zip(
            itertools.product(SUBJECTS[:3], ACTIONS), ["Anna", "Ben", "Carla"] * 8, strict=False
        )
    ]
    return make_items(embedder.embed(texts))


@pytest.fixture(scope="module")
def queries(embedder: Embedder) -> npt.NDArray[np.float32]:
    return embedder.embed(QUERIES)


def exact(
    items: list[VectorItem], query: npt.NDArray[np.float32], k: int, flt: BlockFilter | None = None
) -> list[tuple[str, float]]:
    pool = [it for it in items if matches(it, flt)]
    if not pool:
        return []
    scores = np.stack([it.vector for it in pool]) @ query
    order = sorted(range(len(pool)), key=lambda i: (-scores[i], pool[i].block_id))[:k]
    return [(pool[i].block_id, float(scores[i])) for i in order]


Factory = Callable[..., SyncableIndex]


@pytest.fixture(
    params=[
        "hnsw",
        "hnsw-graph-filter",
        "qdrant",
        "chroma",
        pytest.param("pgvector", marks=pytest.mark.postgres),
    ]
)
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory that opens the same index again (after close) each time it is called."""
    name = request.param
    opened: list[SyncableIndex] = []
    store: BlockStore | None = None
    if name == "pgvector":
        store = BlockStore.open(str(request.getfixturevalue("postgres_url")))

    def factory(model: str = MODEL, dim: int = DIM) -> SyncableIndex:
        index: SyncableIndex
        if name.startswith("hnsw"):
            from kiana.memory.vectors.hnsw import EXACT_LIMIT, HnswIndex

            limit = 0 if name == "hnsw-graph-filter" else EXACT_LIMIT  # 0: never exact
            index = HnswIndex(tmp_path / "vectors", model, dim, exact_limit=limit)
        elif name == "qdrant":
            from kiana.memory.vectors.qdrant import QdrantIndex

            index = QdrantIndex(model, dim, path=tmp_path / "qdrant")
        elif name == "chroma":
            from kiana.memory.vectors.chroma import ChromaIndex

            index = ChromaIndex(tmp_path / "chroma", model, dim)
        else:
            from kiana.memory.vectors.pgvector import PgVectorIndex

            assert store is not None
            index = PgVectorIndex(store.db, model, dim)
        opened.append(index)
        return index

    yield factory
    for index in opened:
        index.close()
    if store is not None:
        store.close()


def ids(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [h.block_id for h in hits]


def test_empty_index(open_index: Factory, queries: npt.NDArray[np.float32]) -> None:
    index = open_index()
    assert index.count() == 0 and index.ids() == set()
    assert index.search(queries[0], 10) == []
    assert index.search(queries[0], 10, BlockFilter(kind="fact")) == []
    index.remove(["0" * 64])  # unknown ids are ignored


def test_search_orders_like_exact_cosine(
    open_index: Factory, corpus: list[VectorItem], queries: npt.NDArray[np.float32]
) -> None:
    index = open_index()
    index.add(corpus)
    assert index.count() == len(corpus)
    assert index.ids() == {it.block_id for it in corpus}
    for query in queries:
        hits = index.search(query, 10)
        expected = exact(corpus, query, 10)
        assert ids(hits) == [i for i, _ in expected]
        assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-4)
    # k beyond the number of vectors returns them all, best first.
    assert len(index.search(queries[0], 500)) == len(corpus)
    assert index.search(queries[0], 0) == []


def test_add_is_an_idempotent_upsert(
    open_index: Factory, corpus: list[VectorItem], queries: npt.NDArray[np.float32]
) -> None:
    index = open_index()
    index.add(corpus[:30])
    index.add(corpus[:30])
    index.add(corpus[20:])
    assert index.count() == len(corpus)
    # Replacing a vector moves the block: give item 7 the vector of the best match for query 1.
    best = exact(corpus, queries[1], 1)[0][0]
    target = next(it for it in corpus if it.block_id == best)
    moved = replace(corpus[7], vector=target.vector.copy(), kind="summary")
    index.add([moved])
    assert index.count() == len(corpus)
    top = ids(index.search(queries[1], 2))
    assert set(top) == {best, moved.block_id}
    assert ids(index.search(queries[1], 5, BlockFilter(kind="summary"))) == [moved.block_id]


def test_remove_is_honoured(
    open_index: Factory, corpus: list[VectorItem], queries: npt.NDArray[np.float32]
) -> None:
    index = open_index()
    index.add(corpus)
    gone = [i for i, _ in exact(corpus, queries[2], 3)]
    index.remove([*gone, "f" * 64])
    assert index.count() == len(corpus) - 3
    assert not set(gone) & index.ids()
    remaining = [it for it in corpus if it.block_id not in gone]
    for query in queries:
        assert ids(index.search(query, 10)) == [i for i, _ in exact(remaining, query, 10)]
    for item in corpus:
        if item.block_id in gone:  # not even its own vector finds it
            assert item.block_id not in ids(index.search(item.vector, 5))
    # Re-adding after removal works.
    index.add([it for it in corpus if it.block_id in gone])
    assert index.count() == len(corpus)


FILTERS = [
    BlockFilter(kind="note"),
    BlockFilter(scope="private"),
    BlockFilter(tag="family"),
    BlockFilter(tag="health"),
    BlockFilter(author="dev-bbbb"),
    BlockFilter(since=1_700_000_030_000),
    BlockFilter(until=1_700_000_010_000),
    BlockFilter(kind="fact", scope="shared", tag="house"),
    BlockFilter(kind="chunk", author="dev-aaaa", since=1_700_000_005_000, until=1_700_000_060_000),
    BlockFilter(tag="no-such-tag"),
    BlockFilter(kind="no-such-kind"),
    BlockFilter(),
]


def filter_id(flt: BlockFilter) -> str:
    parts = [
        f"{f.name}={getattr(flt, f.name)}" for f in fields(flt) if getattr(flt, f.name) is not None
    ]
    return ",".join(parts) or "none"


@pytest.mark.parametrize("flt", FILTERS, ids=filter_id)
def test_every_filter_is_honoured(
    open_index: Factory,
    corpus: list[VectorItem],
    queries: npt.NDArray[np.float32],
    flt: BlockFilter,
) -> None:
    index = open_index()
    index.add(corpus)
    matching = sum(matches(it, flt) for it in corpus)
    for query in queries[:3]:
        hits = index.search(query, 8, flt)
        expected = exact(corpus, query, 8, flt)
        assert len(hits) == min(8, matching)  # k results whenever k blocks match
        assert ids(hits) == [i for i, _ in expected]
        assert all(
            matches(next(it for it in corpus if it.block_id == h.block_id), flt) for h in hits
        )


def test_filters_after_removal(
    open_index: Factory, corpus: list[VectorItem], queries: npt.NDArray[np.float32]
) -> None:
    index = open_index()
    index.add(corpus)
    family = [it.block_id for it in corpus if "family" in it.tags]
    index.remove(family[: len(family) // 2])
    remaining = [it for it in corpus if it.block_id not in family[: len(family) // 2]]
    flt = BlockFilter(tag="family")
    assert ids(index.search(queries[0], 50, flt)) == [
        i for i, _ in exact(remaining, queries[0], 50, flt)
    ]


def test_persists_across_close_and_reopen(
    open_index: Factory, corpus: list[VectorItem], queries: npt.NDArray[np.float32]
) -> None:
    index = open_index()
    index.add(corpus)
    index.remove([corpus[0].block_id])
    before = [index.search(q, 10, f) for q in queries for f in (None, BlockFilter(tag="money"))]
    index.flush()
    index.close()
    again = open_index()
    assert again.count() == len(corpus) - 1
    assert corpus[0].block_id not in again.ids()
    after = [again.search(q, 10, f) for q in queries for f in (None, BlockFilter(tag="money"))]
    assert [ids(h) for h in after] == [ids(h) for h in before]


def test_indexes_of_other_models_are_discarded(
    open_index: Factory, corpus: list[VectorItem]
) -> None:
    """After a reindex with a new model, the old model's index goes (it may hold erased blocks)."""
    other = open_index("other-model", 8)
    other.add(
        [replace(it, vector=it.vector[:8] / np.linalg.norm(it.vector[:8])) for it in corpus[:5]]
    )
    assert other.count() == 5
    other.close()  # Qdrant's local mode allows one client per folder
    index = open_index()
    index.add(corpus[:5])
    assert len(index.discard_other_models()) == 1
    assert index.discard_other_models() == []
    assert index.count() == 5
    index.close()
    assert open_index("other-model", 8).count() == 0


def test_wrong_dimension_is_rejected(open_index: Factory, corpus: list[VectorItem]) -> None:
    index = open_index()
    with pytest.raises(ValueError, match="dimension"):
        index.add([replace(corpus[0], vector=np.zeros(10, dtype=np.float32))])
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros(10, dtype=np.float32), 3)


def test_hnsw_removal_scrubs_the_vector_from_disk(tmp_path: Path, corpus: list[VectorItem]) -> None:
    """mark_deleted alone leaves the vector in the file; an erased block's must be gone."""
    from kiana.memory.vectors.hnsw import HnswIndex

    index = HnswIndex(tmp_path, MODEL, DIM)
    index.add(corpus[:20])
    index.flush()
    (binary,) = tmp_path.glob("*.bin")
    label = index._labels.by_id[corpus[7].block_id]
    stored = np.asarray(index._index.get_items([label]), dtype=np.float32)[0]  # as hnswlib keeps it
    assert float(stored @ corpus[7].vector) > 0.9999
    needle = stored.tobytes()[:256]
    assert needle in binary.read_bytes()  # positive control: this is how it is stored
    index.remove([corpus[7].block_id])
    index.flush()
    (binary,) = tmp_path.glob("*.bin")
    assert needle not in binary.read_bytes()
    sidecar = next(tmp_path.glob("*.json")).read_text()
    assert corpus[7].block_id not in sidecar and corpus[8].block_id in sidecar
