from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kiana.memory.chunking import chunk_text


def test_headings_become_titles_and_paragraphs_pack() -> None:
    text = "# Garden\n\nLemon tree to the cellar.\n\nWater the roses.\n\n## Heating\n\nMeter reading 9 Jan.\n"
    chunks = chunk_text(text, target=200, default_title="notes.md")
    assert [c.title for c in chunks] == ["Garden", "Heating"]
    assert chunks[0].text == "Lemon tree to the cellar.\n\nWater the roses."
    assert [c.seq for c in chunks] == [0, 1]


def test_text_without_heading_uses_default_title() -> None:
    chunks = chunk_text("just one line", target=100, default_title="a.txt")
    assert [(c.title, c.text) for c in chunks] == [("a.txt", "just one line")]


def test_long_paragraph_split_at_sentences() -> None:
    sentence = "This sentence has exactly some words in it. "
    chunks = chunk_text(sentence * 100, target=300)
    assert len(chunks) > 10
    assert all(len(c.text) <= 300 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)


def test_word_without_spaces_is_hard_split() -> None:
    chunks = chunk_text("x" * 1000, target=300)
    assert "".join(c.text for c in chunks) == "x" * 1000
    assert all(len(c.text) <= 300 for c in chunks)


def test_empty_and_whitespace() -> None:
    assert chunk_text("") == []
    assert chunk_text("\n\n   \n# Only a heading\n") == []


@settings(max_examples=80, deadline=None)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="#"),
        max_size=3000,
    )
)
def test_no_words_lost_and_bounded(text: str) -> None:
    chunks = chunk_text(text, target=200)
    assert all(len(c.text) <= 400 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_markdown_headings_only_move_into_titles() -> None:
    text = "intro words\n# A\nalpha beta\n\n## B ##\ngamma\n"
    chunks = chunk_text(text, target=200, default_title="doc")
    assert [(c.title, c.text) for c in chunks] == [
        ("doc", "intro words"),
        ("A", "alpha beta"),
        ("B", "gamma"),
    ]
