"""Split documents into chunks of bounded size along their structure.

Markdown headings start a new section (and give the chunk its title);
paragraphs are packed together up to the target size; a paragraph that is
too long is split at sentence ends, and a sentence that is still too long at
whitespace. No chunk exceeds ``2 * target`` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    title: str
    seq: int


def chunk_text(text: str, *, target: int = 1200, default_title: str = "") -> list[Chunk]:
    if target < 50:
        raise ValueError("target chunk size must be at least 50 characters")
    sections = _sections(text.replace("\r\n", "\n").replace("\r", "\n"), default_title)
    chunks: list[Chunk] = []
    for title, paragraphs in sections:
        for piece in _pack(paragraphs, target):
            chunks.append(Chunk(text=piece, title=title, seq=len(chunks)))
    return chunks


def _sections(text: str, default_title: str) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    title = default_title
    paragraphs: list[str] = []
    current: list[str] = []

    def end_paragraph() -> None:
        if current:
            para = "\n".join(current).strip()
            if para:
                paragraphs.append(para)
            current.clear()

    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            if paragraphs:
                sections.append((title, list(paragraphs)))
                paragraphs.clear()
            title = heading.group(2).strip()
            continue
        if not line.strip():
            end_paragraph()
        else:
            current.append(line.rstrip())
    end_paragraph()
    if paragraphs:
        sections.append((title, paragraphs))
    return sections


def _pack(paragraphs: list[str], target: int) -> list[str]:
    pieces: list[str] = []
    for para in paragraphs:
        pieces.extend(_split_long(para, target) if len(para) > target else [para])
    out: list[str] = []
    buf = ""
    for piece in pieces:
        if buf and len(buf) + 2 + len(piece) > target:
            out.append(buf)
            buf = piece
        else:
            buf = f"{buf}\n\n{piece}" if buf else piece
    if buf:
        out.append(buf)
    return out


def _split_long(text: str, target: int) -> list[str]:
    out: list[str] = []
    buf = ""
    for sentence in _SENTENCE_END.split(text):
        parts = [sentence] if len(sentence) <= target else _hard_split(sentence, target)
        for part in parts:
            if buf and len(buf) + 1 + len(part) > target:
                out.append(buf)
                buf = part
            else:
                buf = f"{buf} {part}" if buf else part
    if buf:
        out.append(buf)
    return out


def _hard_split(text: str, target: int) -> list[str]:
    out: list[str] = []
    while len(text) > target:
        cut = text.rfind(" ", 0, target)
        if cut <= target // 2:
            cut = target
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out
