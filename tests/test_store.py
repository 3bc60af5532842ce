"""The block store, run against SQLite and PostgreSQL alike (no mocks: real databases)."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import BASE_TIME, BlockFactory, device_for
from kiana.blocks import Block, Tombstone
from kiana.errors import (
    BadSignatureError,
    ConflictError,
    DatabaseUnavailableError,
    ErasedError,
    IdMismatchError,
    InputError,
    MigrationError,
    NotFoundError,
    StoreError,
    UnknownAuthorError,
)
from kiana.identity import DeviceKeys
from kiana.store import (
    LATEST,
    MIGRATIONS,
    BlockFilter,
    BlockStore,
    Database,
    Migration,
    PutResult,
    migrate,
)
from kiana.store.migrations import current_version

TombstoneFactory = Callable[..., Tombstone]


def ids(blocks: list[Block]) -> list[str]:
    return [b.id for b in blocks]


def raw_row(store: BlockStore, block_id: str, columns: str) -> tuple[Any, ...] | None:
    return store.db.read(lambda c: c.one(f"SELECT {columns} FROM blocks WHERE id = ?", (block_id,)))


def tamper(store: BlockStore, sql: str, params: tuple[Any, ...]) -> None:
    """Change stored rows behind the store's back, as a disk error or attacker could."""
    store.db.write(lambda c: c.execute(sql, params))


# -- put / get -----------------------------------------------------------------


def test_put_is_idempotent(store: BlockStore, new_block: BlockFactory) -> None:
    block = new_block("Hallo Welt", tags=["gruß"], title="Erster", refs=())
    assert store.put(block) is PutResult.STORED
    assert store.put(block) is PutResult.DUPLICATE
    assert store.get(block.id) == block
    assert store.has(block.id)
    assert store.stats().blocks == 1
    assert ids(list(store.iter_blocks())) == [block.id]


def test_stored_blocks_come_back_exactly(store: BlockStore, new_block: BlockFactory) -> None:
    from kiana.blocks import Ref

    block = new_block(
        'Zeile 1\nZeile 2\t\u2028 😀 "quoted" \\ \' ; DROP TABLE blocks; --',
        kind="chunk",
        scope="private",
        title="Ünïcödé",
        tags=["z", "ä", "a b"],
        source="file:///home/ü/notes.md",
        lang="de-CH",
        seq=2**53 - 1,
        refs=[Ref("part_of", "a" * 64), Ref("supersedes", "b" * 64)],
        created=2**53 - 1,
    )
    store.put(block)
    assert store.get(block.id) == block
    assert store.list_blocks().items == [block]


def test_put_many_reports_each_block(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    old, new, gone = new_block(), new_block(), new_block()
    assert store.put(old) is PutResult.STORED
    store.erase(new_tombstone(gone.id))
    results = store.put_many([old, new, gone, new])
    assert results == [PutResult.DUPLICATE, PutResult.STORED, PutResult.ERASED, PutResult.DUPLICATE]
    assert sorted(ids(list(store.iter_blocks()))) == sorted([old.id, new.id])
    assert store.put_many([]) == []


def _bad_signature(block: Block, other: DeviceKeys) -> Block:
    from dataclasses import replace

    return replace(block, sig="0" * 128)


def _bad_id(block: Block, other: DeviceKeys) -> Block:
    from dataclasses import replace

    return replace(block, body=block.body + " (changed)")


def _unknown_author(block: Block, other: DeviceKeys) -> Block:
    from kiana.blocks import make_block

    return make_block(other.signing, other.device_id, kind="note", body="stranger", created=1)


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        (_bad_signature, BadSignatureError),
        (_bad_id, IdMismatchError),
        (_unknown_author, UnknownAuthorError),
    ],
    ids=["bad-signature", "id-mismatch", "unknown-author"],
)
def test_put_many_with_one_bad_block_stores_nothing(
    store: BlockStore,
    new_block: BlockFactory,
    other_keys: DeviceKeys,
    spoil: Callable[[Block, DeviceKeys], Block],
    error: type[Exception],
) -> None:
    good = [new_block() for _ in range(5)]
    bad = spoil(new_block(), other_keys)
    with pytest.raises(error):
        store.put_many([*good[:3], bad, *good[3:]])
    assert store.stats().blocks == 0
    for block in good:
        with pytest.raises(NotFoundError):
            store.get(block.id)
    assert store.put_many(good) == [PutResult.STORED] * 5


def test_put_many_with_more_blocks_than_one_query_takes(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    blocks = [new_block(f"Block {i}", tags=[f"t{i % 7}"]) for i in range(1100)]
    assert store.put_many(blocks) == [PutResult.STORED] * 1100
    for i in (3, 501, 1099):
        store.erase(new_tombstone(blocks[i].id))
    results = store.put_many(blocks)
    assert results.count(PutResult.DUPLICATE) == 1097
    assert [i for i, r in enumerate(results) if r is PutResult.ERASED] == [3, 501, 1099]
    assert store.stats().blocks == 1097
    live_t0 = {b.id for i, b in enumerate(blocks) if i % 7 == 0 and i not in (3, 501, 1099)}
    assert {b.id for b in store.list_blocks(BlockFilter(tag="t0"), limit=1000).items} == live_t0


def test_put_many_rolls_back_when_the_database_refuses(
    store: BlockStore, new_block: BlockFactory
) -> None:
    stored = new_block("original body")
    store.put(stored)
    tamper(store, "UPDATE blocks SET body = ? WHERE id = ?", ("tampered body", stored.id))
    fresh = [new_block() for _ in range(3)]
    with pytest.raises(ConflictError):
        store.put_many([*fresh, stored])
    for block in fresh:
        assert not store.has(block.id)
    assert store.stats().blocks == 1


def test_conflict_when_stored_body_was_tampered(store: BlockStore, new_block: BlockFactory) -> None:
    block = new_block("the truth")
    store.put(block)
    tamper(store, "UPDATE blocks SET body = ? WHERE id = ?", ("a lie", block.id))
    with pytest.raises(ConflictError) as info:
        store.put(block)
    assert info.value.code == "conflict"
    assert isinstance(info.value, StoreError)


def test_conflict_when_stored_body_and_hash_were_tampered(
    store: BlockStore, new_block: BlockFactory
) -> None:
    block = new_block("the truth")
    store.put(block)
    fake_hash = hashlib.sha256(b"a lie").hexdigest()
    tamper(
        store,
        "UPDATE blocks SET body = ?, body_hash = ? WHERE id = ?",
        ("a lie", fake_hash, block.id),
    )
    with pytest.raises(ConflictError):
        store.put(block)


def test_get_errors(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    with pytest.raises(NotFoundError) as missing:
        store.get("f" * 64)
    assert isinstance(missing.value, StoreError)
    assert missing.value.http_status == 404
    assert not store.has("f" * 64)

    block = new_block()
    store.put(block)
    store.erase(new_tombstone(block.id))
    with pytest.raises(ErasedError) as erased:
        store.get(block.id)
    assert erased.value.http_status == 410

    never_seen = "e" * 64
    store.erase(new_tombstone(never_seen))
    with pytest.raises(ErasedError):
        store.get(never_seen)


# -- devices and metadata --------------------------------------------------------


def test_devices_and_key_lookup(
    store: BlockStore, keys: DeviceKeys, other_keys: DeviceKeys, new_block: BlockFactory
) -> None:
    block = new_block("from the second device", keys=other_keys)
    with pytest.raises(UnknownAuthorError):
        store.put(block)
    assert store.device_key(other_keys.device_id) is None  # cached as unknown...

    store.add_device(device_for(other_keys, role="member", name="Telefon"))
    assert store.device_key(other_keys.device_id) == other_keys.sign_public  # ...until added
    assert store.put(block) is PutResult.STORED

    store.add_device(device_for(other_keys, role="authority", name="Handy"))
    devices = {d.device_id: d for d in store.devices()}
    assert set(devices) == {keys.device_id, other_keys.device_id}
    assert (devices[other_keys.device_id].role, devices[other_keys.device_id].name) == (
        "authority",
        "Handy",
    )
    assert devices[keys.device_id] == device_for(keys)
    assert store.stats().devices == 2


def test_mind_meta(store: BlockStore) -> None:
    assert store.get_meta("name") is None
    store.set_meta("name", "Kiana")
    store.set_meta("name", "Kiana Ünï")
    assert store.get_meta("name") == "Kiana Ünï"


# -- list ------------------------------------------------------------------------


@pytest.fixture
def listed(
    store: BlockStore,
    new_block: BlockFactory,
    new_tombstone: TombstoneFactory,
    other_keys: DeviceKeys,
) -> dict[str, Block]:
    store.add_device(device_for(other_keys, role="member"))
    t = BASE_TIME
    blocks = {
        "b1": new_block(kind="fact", scope="private", tags=["a"], created=t + 10),
        "b2": new_block(scope="shared", tags=["a", "b"], created=t + 20, keys=other_keys),
        "b3": new_block(scope="private", tags=["b"], created=t + 30),
        "b4": new_block(kind="chunk", scope="shared", created=t + 40, keys=other_keys),
        "gone": new_block(tags=["a", "b"], created=t + 50),
    }
    store.put_many(list(blocks.values()))
    store.erase(new_tombstone(blocks.pop("gone").id))
    return blocks


LIST_CASES: list[tuple[BlockFilter, list[str]]] = [
    (BlockFilter(), ["b4", "b3", "b2", "b1"]),
    (BlockFilter(kind="note"), ["b3", "b2"]),
    (BlockFilter(kind="fact"), ["b1"]),
    (BlockFilter(kind="summary"), []),
    (BlockFilter(scope="private"), ["b3", "b1"]),
    (BlockFilter(scope="shared"), ["b4", "b2"]),
    (BlockFilter(tag="a"), ["b2", "b1"]),
    (BlockFilter(tag="b"), ["b3", "b2"]),
    (BlockFilter(tag="A"), []),
    (BlockFilter(author="other"), ["b4", "b2"]),
    (BlockFilter(since=BASE_TIME + 20), ["b4", "b3", "b2"]),
    (BlockFilter(until=BASE_TIME + 30), ["b2", "b1"]),
    (BlockFilter(since=BASE_TIME + 20, until=BASE_TIME + 40), ["b3", "b2"]),
    (BlockFilter(since=BASE_TIME + 41), []),
    (BlockFilter(kind="note", scope="shared", tag="a"), ["b2"]),
    (BlockFilter(kind="note", tag="b", author="self"), ["b3"]),
]


def test_list_filters(
    store: BlockStore, listed: dict[str, Block], keys: DeviceKeys, other_keys: DeviceKeys
) -> None:
    # One database for all cases (creating one per case is slow on PostgreSQL);
    # every mismatch is reported, not just the first.
    from dataclasses import replace

    name_of = {b.id: name for name, b in listed.items()}
    wrong = []
    for flt, expected in LIST_CASES:
        query = flt
        if flt.author is not None:
            query = replace(flt, author={"self": keys, "other": other_keys}[flt.author].device_id)
        page = store.list_blocks(query)
        got = [name_of.get(b.id, b.id) for b in page.items]
        if got != expected or page.next_cursor is not None:
            wrong.append(f"{flt}: expected {expected}, got {got} (cursor {page.next_cursor})")
    assert wrong == []


def test_list_pagination_has_no_duplicates_or_gaps(
    store: BlockStore, new_block: BlockFactory
) -> None:
    # 120 blocks, seven per millisecond so the cursor must break ties, stored shuffled.
    blocks = [
        new_block(created=BASE_TIME + i // 7, kind=("fact", "note")[i % 2]) for i in range(120)
    ]
    random.Random(7).shuffle(blocks)
    store.put_many(blocks)
    order = {b.id: n for n, b in enumerate(blocks)}  # storage order breaks ties
    expected = sorted(blocks, key=lambda b: (b.created, order[b.id]), reverse=True)

    seen: list[Block] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = store.list_blocks(limit=25, cursor=cursor)
        pages += 1
        seen.extend(page.items)
        if pages == 2:
            # A block written mid-way (newer than everything) must not disturb later pages.
            store.put(new_block(created=BASE_TIME + 10_000))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 5
    assert ids(seen) == ids(expected)

    # The same with a filter and an odd page size.
    facts = [b for b in expected if b.kind == "fact"]
    seen, cursor = [], None
    while True:
        page = store.list_blocks(BlockFilter(kind="fact"), limit=7, cursor=cursor)
        assert len(page.items) <= 7
        seen.extend(page.items)
        if not (cursor := page.next_cursor):
            break
    assert ids(seen) == ids(facts)


def test_list_page_boundaries(store: BlockStore, new_block: BlockFactory) -> None:
    blocks = [new_block() for _ in range(10)]
    store.put_many(blocks)
    full = store.list_blocks(limit=10)
    assert len(full.items) == 10
    assert full.next_cursor is None
    first = store.list_blocks(limit=9)
    assert first.next_cursor is not None
    rest = store.list_blocks(limit=9, cursor=first.next_cursor)
    assert ids(rest.items) == [blocks[0].id]
    assert rest.next_cursor is None
    assert store.list_blocks(limit=1000).items == full.items


def test_list_rejects_bad_limits_and_cursors(store: BlockStore) -> None:
    for limit in (0, -1, 1001):
        with pytest.raises(InputError):
            store.list_blocks(limit=limit)
    for cursor in ("nonsense", "1.2.3", "a.b", "12"):
        with pytest.raises(InputError):
            store.list_blocks(cursor=cursor)


# -- keyword search ------------------------------------------------------------------


@pytest.fixture
def corpus(store: BlockStore, new_block: BlockFactory) -> dict[str, Block]:
    blocks = {
        "bakery": new_block(
            "Die Bäckerei in München öffnet um sieben Uhr.", title="Frühstück", tags=["essen"]
        ),
        "greeting": new_block("Grüße aus Köln und Düsseldorf!", kind="fact"),
        "tram": new_block("ÖFFNUNGSZEITEN der Straßenbahn am Wochenende", tags=["verkehr"]),
        "fox": new_block("The quick brown fox jumps over the lazy dog"),
        "clouds": new_block("Über den Wolken muss die Freiheit wohl grenzenlos sein"),
    }
    store.put_many(list(blocks.values()))
    return blocks


SEARCH_CASES: list[tuple[str, set[str]]] = [
    ("münchen", {"bakery"}),
    ("MÜNCHEN", {"bakery"}),
    ("Bäckerei", {"bakery"}),
    ("bäck", {"bakery"}),  # prefix match for words of four or more characters
    ("frühstück", {"bakery"}),  # title
    ("essen", {"bakery"}),  # tag
    ("grüße", {"greeting"}),
    ("düsseldorf", {"greeting"}),
    ("köln", {"greeting"}),
    ("öffnungszeiten", {"tram"}),  # stored in capitals
    ("Öffn", {"bakery", "tram"}),  # "öffnet" and "Öffnungszeiten"
    ("straßenbahn", {"tram"}),
    ("über", {"clouds"}),  # stored capitalised
    ("freiheit grenzenlos", {"clouds"}),
    ("köln fox", {"greeting", "fox"}),
    ("die", {"bakery", "clouds"}),
    ("di", set()),  # short words match whole words only
    ("köl", set()),
    ("elefant", set()),
    ('fox" AND (dog', {"fox"}),  # query syntax is never interpreted
    ("NOT fox", {"fox"}),
    ("verkehr* OR 1=1", {"tram"}),
]


def test_search(store: BlockStore, corpus: dict[str, Block]) -> None:
    name_of = {b.id: name for name, b in corpus.items()}
    wrong = []
    for query, expected in SEARCH_CASES:
        hits = store.search(query)
        got = [name_of[h.block.id] for h in hits]
        if sorted(got) != sorted(expected):
            wrong.append(f"{query!r}: expected {sorted(expected)}, got {got}")
        for hit in hits:
            assert hit.block == store.get(hit.block.id)
    assert wrong == []


def test_search_filters_and_limit(store: BlockStore, corpus: dict[str, Block]) -> None:
    hits = store.search("münchen köln", BlockFilter(kind="fact"))
    assert [h.block.id for h in hits] == [corpus["greeting"].id]
    hits = store.search("münchen köln", BlockFilter(tag="essen"))
    assert [h.block.id for h in hits] == [corpus["bakery"].id]
    assert store.search("münchen", BlockFilter(since=corpus["bakery"].created + 1)) == []
    assert len(store.search("die köln fox", limit=2)) == 2
    with pytest.raises(InputError):
        store.search("fox", limit=0)


def test_search_ranks_better_matches_first(store: BlockStore, new_block: BlockFactory) -> None:
    weak = new_block("a zebra among many other animals in a very large and crowded zoo")
    strong = new_block("zebra zebra zebra")
    store.put_many([weak, strong])
    hits = store.search("zebra")
    assert [h.block.id for h in hits] == [strong.id, weak.id]
    assert hits[0].score > hits[1].score


def test_search_needs_words(store: BlockStore) -> None:
    for query in ("", "   ", "?!* ()", "\"'"):
        with pytest.raises(InputError):
            store.search(query)


def test_erased_blocks_are_not_found(
    store: BlockStore, corpus: dict[str, Block], new_tombstone: TombstoneFactory
) -> None:
    assert store.erase(new_tombstone(corpus["fox"].id))
    assert store.search("fox") == []
    assert store.search("quick brown dog") == []
    assert len(store.search("köln")) == 1


# -- erase -----------------------------------------------------------------------


def test_erase_removes_content_and_keeps_tombstone(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    keep = new_block("bleibt", tags=["geheim"])
    secret = new_block(
        "Geheimnis: PIN 4711", title="Bank", tags=["geheim", "bank"], source="bank.txt"
    )
    store.put_many([keep, secret])
    tomb = new_tombstone(secret.id, reason="DSGVO")

    assert store.erase(tomb) is True
    with pytest.raises(ErasedError):
        store.get(secret.id)
    assert ids(store.list_blocks().items) == [keep.id]
    assert ids(store.list_blocks(BlockFilter(tag="bank")).items) == []
    assert ids(store.list_blocks(BlockFilter(tag="geheim")).items) == [keep.id]
    assert store.search("geheimnis") == []
    assert store.search("bank") == []
    assert ids(list(store.iter_blocks())) == [keep.id]
    assert store.find_same_body(secret.body) is None
    # Nothing of the content is left in storage.
    row = raw_row(store, secret.id, "body, meta, title, tags_text, source, refs, body_hash, erased")
    assert row == ("", "{}", "", "", "", "[]", "", 1)
    tags = store.db.read(
        lambda c: c.all("SELECT tag FROM block_tags WHERE block_id = ?", (secret.id,))
    )
    assert tags == []

    assert store.tombstone_for(secret.id) == tomb
    assert list(store.iter_tombstones()) == [tomb]
    stats = store.stats()
    assert (stats.blocks, stats.erased, stats.tombstones) == (1, 1, 1)
    assert store.resolve_prefix(secret.id[:10]) == secret.id

    # Erasing again changes nothing; the erased block cannot come back.
    assert store.erase(tomb) is False
    assert store.put(secret) is PutResult.ERASED
    assert store.put_many([secret, keep]) == [PutResult.ERASED, PutResult.DUPLICATE]
    assert raw_row(store, secret.id, "body, erased") == ("", 1)
    assert store.stats().tombstones == 1


def test_tombstone_for_unknown_block_refuses_it_later(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    block = new_block("arrives too late")
    tomb = new_tombstone(block.id)
    assert store.erase(tomb) is False  # nothing to remove yet
    assert store.tombstone_for(block.id) == tomb
    assert store.put(block) is PutResult.ERASED
    assert not store.has(block.id)
    assert raw_row(store, block.id, "body") is None
    with pytest.raises(ErasedError):
        store.get(block.id)
    assert store.stats().blocks == 0


def test_tombstone_by_unknown_device_is_rejected(
    store: BlockStore,
    new_block: BlockFactory,
    new_tombstone: TombstoneFactory,
    other_keys: DeviceKeys,
) -> None:
    block = new_block()
    store.put(block)
    with pytest.raises(UnknownAuthorError):
        store.erase(new_tombstone(block.id, keys=other_keys))
    assert store.get(block.id) == block
    assert store.tombstone_for(block.id) is None
    assert store.stats().tombstones == 0


def test_forged_tombstone_is_rejected(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    from dataclasses import replace

    a, b = new_block(), new_block()
    store.put_many([a, b])
    tomb = new_tombstone(a.id)
    with pytest.raises(IdMismatchError):
        store.erase(replace(tomb, erases=b.id))  # redirected to another block
    with pytest.raises(BadSignatureError):
        store.erase(replace(tomb, sig="0" * 128))
    assert store.get(a.id) == a
    assert store.get(b.id) == b


# -- stats, prefixes, iteration ----------------------------------------------------


def test_stats(store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory) -> None:
    empty = store.stats()
    assert (empty.blocks, empty.erased, empty.tombstones, empty.devices) == (0, 0, 0, 1)
    assert empty.by_kind == {} and empty.by_scope == {}
    assert empty.schema_version == LATEST

    blocks = [
        new_block(kind="fact", scope="private"),
        new_block(kind="fact"),
        new_block(kind="note"),
        new_block(kind="chunk", scope="private"),
    ]
    store.put_many(blocks)
    store.erase(new_tombstone(blocks[2].id))
    store.erase(new_tombstone("d" * 64))
    stats = store.stats()
    assert stats.blocks == 3
    assert stats.erased == 1
    assert stats.tombstones == 2
    assert stats.by_kind == {"fact": 2, "chunk": 1}
    assert stats.by_scope == {"private": 2, "shared": 1}


def test_resolve_prefix(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    block = new_block()
    store.put(block)
    assert store.resolve_prefix(block.id[:6]) == block.id
    assert store.resolve_prefix(f"  {block.id[:12].upper()} ") == block.id
    assert store.resolve_prefix(block.id) == block.id

    # Two erased ids sharing a prefix (tombstones are enough to make it ambiguous).
    first, second = "abcdef" + "0" * 58, "abcdef" + "1" * 58
    store.erase(new_tombstone(first))
    store.erase(new_tombstone(second))
    with pytest.raises(InputError, match="ambiguous"):
        store.resolve_prefix("abcdef")
    assert store.resolve_prefix("abcdef0") == first
    assert store.resolve_prefix("abcdef1") == second

    unused = next(p for p in ("000000", "111111", "222222") if not block.id.startswith(p))
    with pytest.raises(NotFoundError):
        store.resolve_prefix(unused)
    for bad in ("abcde", "xyz123", "", "a" * 65, "abc-def"):
        with pytest.raises(InputError):
            store.resolve_prefix(bad)


def test_iter_blocks_in_storage_order(
    store: BlockStore, new_block: BlockFactory, new_tombstone: TombstoneFactory
) -> None:
    blocks = [new_block(created=BASE_TIME - i) for i in range(25)]  # created runs backwards
    for chunk in (blocks[:10], blocks[10:]):
        store.put_many(chunk)
    store.erase(new_tombstone(blocks[4].id))
    expected = [b for n, b in enumerate(blocks) if n != 4]
    assert list(store.iter_blocks(batch=4)) == expected
    assert list(store.iter_blocks()) == expected


def test_find_same_body(store: BlockStore, new_block: BlockFactory) -> None:
    a = new_block("gleicher Text", source="a.md")
    store.put(a)
    assert store.find_same_body("gleicher Text") == a.id
    assert store.find_same_body("gleicher Text", source="a.md") == a.id
    assert store.find_same_body("gleicher Text", source="b.md") is None
    assert store.find_same_body("anderer Text") is None


# -- concurrency -----------------------------------------------------------------


def test_concurrent_readers_while_writing(store: BlockStore, new_block: BlockFactory) -> None:
    blocks = [new_block(f"Eintrag {i} über Threads", tags=[f"t{i % 3}"]) for i in range(150)]
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(0, len(blocks), 10):
                store.put_many(blocks[i : i + 10])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            last = 0
            while True:
                finished = done.is_set()
                page = store.list_blocks(limit=1000)
                count = len(page.items)
                assert count >= last, "a reader saw blocks disappear"
                assert count % 10 == 0, "a reader saw a half-written batch"
                last = count
                for block in page.items[:5]:
                    assert store.get(block.id) == block
                store.search("threads")
                store.stats()
                if finished:
                    assert count == len(blocks)
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert store.stats().blocks == len(blocks)


def test_concurrent_writers(store: BlockStore, new_block: BlockFactory) -> None:
    blocks = [new_block() for _ in range(80)]
    errors: list[BaseException] = []
    results: list[PutResult] = []

    def write(part: list[Block]) -> None:
        try:
            for block in part:
                results.append(store.put(block))
                results.append(store.put(block))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(blocks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert results.count(PutResult.STORED) == 80
    assert results.count(PutResult.DUPLICATE) == 80
    assert sorted(ids(list(store.iter_blocks()))) == sorted(ids(blocks))


# -- lifecycle and failures --------------------------------------------------------


def test_store_persists_across_reopen(
    store_url: str, keys: DeviceKeys, new_block: BlockFactory
) -> None:
    block = new_block("dauerhaft")
    first = BlockStore.open(store_url)
    first.add_device(device_for(keys))
    first.put(block)
    first.close()
    first.close()  # closing twice is harmless
    second = BlockStore.open(store_url)
    try:
        assert second.get(block.id) == block
        assert second.search("dauerhaft")[0].block == block
        assert second.device_key(keys.device_id) == keys.sign_public
    finally:
        second.close()


def test_closed_store_raises_store_error(store: BlockStore, new_block: BlockFactory) -> None:
    block = new_block()
    store.put(block)
    store.get(block.id)  # opens this thread's reader connection
    store.close()
    with pytest.raises(StoreError):
        store.put(new_block())
    with pytest.raises(StoreError):
        store.get(block.id)


def test_unsupported_url() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        BlockStore.open("mysql://localhost/kiana")


def test_unreachable_postgres(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://nobody@/kiana?host={tmp_path}&connect_timeout=2"
    with pytest.raises(DatabaseUnavailableError) as info:
        BlockStore.open(url)
    assert info.value.http_status == 503


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "kiana.db"
    path.write_bytes(b"this is not a database file at all" * 100)
    with pytest.raises(StoreError):
        BlockStore.open(f"sqlite:///{path}")
    assert path.read_bytes().startswith(b"this is not a database")


def test_full_disk_surfaces_as_store_error_and_keeps_data(
    sqlite_url: str, keys: DeviceKeys, new_block: BlockFactory
) -> None:
    store = BlockStore.open(sqlite_url)
    try:
        store.add_device(device_for(keys))
        kept = [new_block(f"vorher {i}") for i in range(5)]
        store.put_many(kept)
        writer = store.db._writer.raw
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is now full

        big = [new_block("x" * 50_000 + str(i)) for i in range(3)]
        with pytest.raises(StoreError, match="disk is full") as info:
            store.put_many(big)
        assert type(info.value) is StoreError
        with pytest.raises(StoreError):
            store.set_meta("big", "y" * 100_000)

        # Nothing half-written; earlier data intact and searchable.
        assert ids(list(store.iter_blocks())) == ids(kept)
        assert store.search("vorher")[0].block in kept
        assert store.get_meta("big") is None
        for block in big:
            assert not store.has(block.id)

        # Once space is back, the same store keeps working.
        writer.execute("PRAGMA max_page_count = 1073741823")
        assert store.put_many(big) == [PutResult.STORED] * 3
        assert store.stats().blocks == 8
        integrity = store.db.read(lambda c: c.one("PRAGMA integrity_check"))
        assert integrity == ("ok",)
    finally:
        store.close()


def test_failed_commit_rolls_back_and_writes_keep_working(store_url: str) -> None:
    # A deferred foreign key is only checked at COMMIT: the commit itself fails.
    db = Database(store_url)
    try:
        db.write(lambda c: c.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        db.write(
            lambda c: c.execute(
                "CREATE TABLE child (pid INTEGER REFERENCES parent (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        with pytest.raises(StoreError):
            db.write(lambda c: c.execute("INSERT INTO child VALUES (1)"))
        assert db.read(lambda c: c.one("SELECT COUNT(*) FROM child")) == (0,)
        db.write(lambda c: c.execute("INSERT INTO parent VALUES (1)"))
        db.write(lambda c: c.execute("INSERT INTO child VALUES (1)"))
        assert db.read(lambda c: c.all("SELECT pid FROM child")) == [(1,)]
    finally:
        db.close()


# -- migrations --------------------------------------------------------------------

EXTRA = Migration(
    LATEST + 1,
    "test: extra table",
    sqlite=(
        "CREATE TABLE extra_notes (note TEXT NOT NULL)",
        "INSERT INTO extra_notes VALUES ('x')",
    ),
    postgres=(
        "CREATE TABLE extra_notes (note TEXT NOT NULL)",
        "INSERT INTO extra_notes VALUES ('x')",
    ),
)
BROKEN = Migration(
    LATEST + 1,
    "test: fails half-way",
    sqlite=("CREATE TABLE half_done (x TEXT)", "THIS IS NOT SQL"),
    postgres=("CREATE TABLE half_done (x TEXT)", "THIS IS NOT SQL"),
)


def _has_table(db: Database, name: str) -> bool:
    if db.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = (
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_name = ? AND table_schema = current_schema()"
        )
    return db.read(lambda c: c.one(sql, (name,))) is not None


def test_fresh_database_is_migrated_once(store_url: str) -> None:
    db = Database(store_url)
    try:
        assert current_version(db) == 0
        assert migrate(db) == [m.version for m in MIGRATIONS]
        assert current_version(db) == LATEST
        assert migrate(db) == []
    finally:
        db.close()


def test_upgrade_keeps_existing_blocks_searchable(
    store_url: str, keys: DeviceKeys, new_block: BlockFactory
) -> None:
    """Blocks written under each older schema survive every later migration."""
    db = Database(store_url)
    try:
        migrate(db, migrations=MIGRATIONS[:1])
        old = new_block("Alte Notiz vom Flohmarkt", tags=["markt"], title="Samstag")
        meta = '{"tags":["markt"],"title":"Samstag"}'
        db.write(
            lambda c: c.execute(
                "INSERT INTO blocks (id, v, kind, scope, body, meta, title, tags_text, source,"
                " author, created, refs, sig, body_hash, erased, stored)"
                " VALUES (?, 1, ?, ?, ?, ?, ?, ?, '', ?, ?, '[]', ?, ?, 0, 0)",
                (
                    old.id,
                    old.kind,
                    old.scope,
                    old.body,
                    meta,
                    old.meta.title,
                    "markt",
                    old.author,
                    old.created,
                    old.sig,
                    hashlib.sha256(old.body.encode()).hexdigest(),
                ),
            )
        )
        assert migrate(db) == [m.version for m in MIGRATIONS[1:]]
        store = BlockStore(db)
        store.add_device(device_for(keys))
        assert store.get(old.id) == old
        assert [h.block.id for h in store.search("flohmarkt")] == [old.id]
        assert [h.block.id for h in store.search("samstag markt")] == [old.id]
        assert store.put(old) is PutResult.DUPLICATE
        new = new_block("Neue Notiz vom Flohmarkt")
        store.put(new)
        assert {h.block.id for h in store.search("flohmarkt")} == {old.id, new.id}
    finally:
        db.close()


def test_migration_backs_up_sqlite_first(
    tmp_path: Path, keys: DeviceKeys, new_block: BlockFactory
) -> None:
    path = tmp_path / "home" / "kiana.db"
    url = f"sqlite:///{path}"
    backups = tmp_path / "home" / "backups"
    block = new_block("vor der Migration")
    store = BlockStore.open(url, backup_dir=backups)
    assert not backups.exists() or not list(backups.iterdir())  # new file: nothing to back up
    db = Database(url)
    try:
        store.add_device(device_for(keys))
        store.put(block)  # still open: the block sits in the WAL, not yet in the main file
        assert migrate(db, backup_dir=backups, migrations=[*MIGRATIONS, EXTRA]) == [LATEST + 1]
        assert current_version(db) == LATEST + 1
        assert _has_table(db, "extra_notes")
        # Nothing pending: no further backup.
        assert migrate(db, backup_dir=backups, migrations=[*MIGRATIONS, EXTRA]) == []
    finally:
        db.close()
        store.close()

    files = list(backups.iterdir())
    assert len(files) == 1
    assert f"before-v{LATEST + 1}" in files[0].name
    old = sqlite3.connect(files[0])
    try:
        assert old.execute("SELECT MAX(version) FROM schema_version").fetchone() == (LATEST,)
        tables = {r[0] for r in old.execute("SELECT name FROM sqlite_master")}
        assert "extra_notes" not in tables
        assert old.execute("SELECT body FROM blocks").fetchall() == [(block.body,)]
    finally:
        old.close()
    # The backup is a working store at the old version.
    restored = BlockStore.open(f"sqlite:///{files[0]}")
    try:
        assert restored.get(block.id) == block
        assert restored.stats().schema_version == LATEST
    finally:
        restored.close()


def test_newer_schema_than_code_is_refused(store_url: str) -> None:
    BlockStore.open(store_url).close()
    db = Database(store_url)
    try:
        assert migrate(db, migrations=[*MIGRATIONS, EXTRA]) == [LATEST + 1]
        with pytest.raises(MigrationError, match="newer"):
            migrate(db)
    finally:
        db.close()
    with pytest.raises(MigrationError) as info:
        BlockStore.open(store_url)
    assert isinstance(info.value, StoreError)


def test_failing_migration_rolls_back(store_url: str, tmp_path: Path) -> None:
    BlockStore.open(store_url).close()
    db = Database(store_url)
    try:
        with pytest.raises(MigrationError, match="failed"):
            migrate(db, migrations=[*MIGRATIONS, BROKEN], backup_dir=tmp_path / "backups")
        assert current_version(db) == LATEST
        assert not _has_table(db, "half_done")

        # Migrations run one transaction each: a good one before a bad one sticks.
        later = Migration(LATEST + 2, "test: broken later", BROKEN.sqlite, BROKEN.postgres)
        with pytest.raises(MigrationError):
            migrate(db, migrations=[*MIGRATIONS, EXTRA, later])
        assert current_version(db) == LATEST + 1
        assert _has_table(db, "extra_notes")
        assert not _has_table(db, "half_done")
    finally:
        db.close()
    # The database stays at the version it reached, which this code does not know.
    with pytest.raises(MigrationError):
        BlockStore.open(store_url)
