from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiana.blocks import Ref
from kiana.config import load_settings
from kiana.errors import ErasedError, HomeError, InputError, NotFoundError
from kiana.node import Node
from kiana.store import BlockFilter


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node.init(load_settings(tmp_path / "home", environ={}), mind_name="Test", device_name="dev")
    yield n
    n.close()


def test_remember_signs_verifies_and_dedupes(node: Node) -> None:
    first = node.remember("  The boiler service is on 3 June ", tags=["home"])
    assert first.created and first.block.body == "The boiler service is on 3 June"
    assert first.block.author == node.device_id
    again = node.remember("The boiler service is on 3 June", tags=["home"])
    assert not again.created and again.block.id == first.block.id
    # a different scope is a different block
    private = node.remember("The boiler service is on 3 June", scope="private")
    assert private.created and private.block.id != first.block.id
    prov = node.provenance(first.block.id[:8])
    assert prov.valid and prov.author_name == "dev" and prov.author_role == "authority"


def test_remember_empty_is_an_error(node: Node) -> None:
    with pytest.raises(InputError):
        node.remember("   ")


def test_supersedes_resolves_prefix(node: Node) -> None:
    old = node.remember("Dekra inspection on 12 June").block
    new = node.remember("Dekra inspection moved to 19 June", supersedes=old.id[:10]).block
    assert [(r.rel, r.id) for r in new.refs] == [("supersedes", old.id)]
    with pytest.raises(NotFoundError):
        node.remember("x", supersedes="abcdef")


def test_add_files_chunks_and_skips_unchanged(node: Node, tmp_path: Path) -> None:
    a = tmp_path / "a.md"
    a.write_text(
        "# Garden\n\nLemon tree to the cellar before frost.\n\n# Car\n\nTyres in October.\n"
    )
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa not utf8")
    seen: list[int] = []
    report = node.add_files([a, bad, tmp_path / "missing.md"], tags=["docs"], progress=seen.append)
    assert (report.files, report.chunks_stored, len(report.errors)) == (1, 2, 2)
    assert sum(seen) == 3
    assert {p for p, _ in report.errors} == {str(bad), str(tmp_path / "missing.md")}
    chunks = node.list_blocks(BlockFilter(kind="chunk", tag="docs")).items
    assert sorted(c.meta.title for c in chunks) == ["Car", "Garden"]
    assert all(c.meta.source == str(a.resolve()) for c in chunks)
    again = node.add_files([a])
    assert (again.chunks_stored, again.chunks_skipped) == (0, 2)


def test_forget_is_idempotent_and_content_gone(node: Node) -> None:
    block = node.remember("Secret PIN hint: grandma's street").block
    tomb = node.forget(block.id[:8], reason="user request")
    assert tomb.erases == block.id
    assert node.forget(block.id).id == tomb.id
    with pytest.raises(ErasedError):
        node.get(block.id)
    assert node.search("grandma") == []
    with pytest.raises(NotFoundError):
        node.forget("0" * 64)


def test_database_of_another_mind_is_refused(tmp_path: Path) -> None:
    s1 = load_settings(tmp_path / "one", environ={})
    s2 = load_settings(tmp_path / "two", environ={})
    Node.init(s1).close()
    Node.init(s2).close()
    shutil.copy(tmp_path / "one" / "kiana.db", tmp_path / "two" / "kiana.db")
    for suffix in ("-wal", "-shm"):
        (tmp_path / "two" / f"kiana.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(HomeError, match="belongs to"):
        Node.open(s2)


def test_status_reports_counts(node: Node) -> None:
    node.remember("a fact")
    node.remember("a note", kind="note", scope="private")
    st = node.status()
    assert st["blocks"]["total"] == 2
    assert st["blocks"]["by_kind"] == {"fact": 1, "note": 1}
    assert st["blocks"]["by_scope"] == {"private": 1, "shared": 1}
    assert st["storage"]["backend"] == "sqlite" and st["storage"]["schema_version"] >= 1
    assert st["mind"]["id"] == node.mind_id


def test_remember_rejects_invalid_unicode_cleanly(node: Node) -> None:
    from kiana.errors import MalformedBlockError

    with pytest.raises(MalformedBlockError):
        node.remember("bad \udcff text")
    assert node.status()["blocks"]["total"] == 0


def test_remember_dedupe_uses_normalised_tags(node: Node) -> None:
    first = node.remember("tagged fact", tags=["b"])
    again = node.remember("tagged fact", tags=[" b ", "b"])
    assert not again.created and again.block.id == first.block.id


def test_oversized_cursor_is_input_error(node: Node) -> None:
    with pytest.raises(InputError):
        node.list_blocks(cursor="1." + "9" * 19)


def test_add_reports_oversized_chunk_per_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home", environ={"KIANA_MAX_BODY_BYTES": "100"})
    with Node.init(settings) as n:
        big = tmp_path / "big.md"
        big.write_text("ü" * 400)  # 800 UTF-8 bytes in one chunk, over the 100-byte limit
        small = tmp_path / "small.md"
        small.write_text("short note")
        report = n.add_files([big, small])
        assert report.files == 1 and report.chunks_stored == 1
        assert [p for p, _ in report.errors] == [str(big)]


def test_successors_follow_supersedes_chains(node: Node) -> None:
    a = node.remember("Dentist on 3 March").block
    b = node.remember("Dentist moved to 5 March", supersedes=a.id).block
    c = node.remember("Dentist moved again, to 11 March", supersedes=b.id).block
    other = node.remember("Unrelated fact").block
    assert node.store.successors([a.id, b.id, c.id, other.id]) == {a.id: c.id, b.id: c.id}
    node.forget(c.id)
    assert node.store.successors([a.id]) == {a.id: b.id}


def test_successors_when_one_block_supersedes_two(node: Node) -> None:
    a = node.remember("Pick-up at 3 pm").block
    b = node.remember("Pick-up by Grandpa").block
    both = node.new_block(
        body="Pick-up at 4 pm by Grandpa",
        kind="fact",
        refs=[Ref("supersedes", a.id), Ref("supersedes", b.id)],
    )
    node.store.put(both)
    later = node.remember("Pick-up at 5 pm by Grandpa", supersedes=both.id).block
    assert node.store.successors([a.id, b.id]) == {a.id: later.id, b.id: later.id}


def test_import_announces_on_the_change_feed(node: Node) -> None:
    """An import wakes the dashboard's events stream and sync at once (not the 1 s poll)."""
    from kiana.changes import Change, Topic
    from kiana.transfer import export_lines, import_lines

    node.remember("kept fact")
    gone = node.remember("forgotten fact")
    node.forget(gone.block.id)
    lines = list(export_lines(node))
    seen: list[Change] = []
    node.changes.subscribe(seen.append)
    report = import_lines(node, lines)  # a re-run import: duplicates, one tombstone again
    assert report.duplicates == 1 and report.tombstones == 1
    assert seen.count(Change(Topic.BLOCKS, local=True)) >= 2  # the batch and the erasure
