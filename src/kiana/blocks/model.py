"""Value types for knowledge blocks and tombstones (frozen, slotted, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

FORMAT_VERSION: Final = 1
KINDS: Final = frozenset({"fact", "note", "chunk", "conversation", "summary"})
SCOPES: Final = frozenset({"private", "shared"})
REF_RELATIONS: Final = frozenset({"supersedes", "part_of", "replies_to", "derived_from"})

BLOCK_DOMAIN: Final = b"kiana:block:v1\x00"
TOMBSTONE_DOMAIN: Final = b"kiana:tombstone:v1\x00"


@dataclass(frozen=True, slots=True)
class Meta:
    """Descriptive fields. Empty values are omitted from the canonical form."""

    title: str = ""
    tags: tuple[str, ...] = ()
    source: str = ""
    lang: str = ""
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.title:
            out["title"] = self.title
        if self.tags:
            out["tags"] = list(self.tags)
        if self.source:
            out["source"] = self.source
        if self.lang:
            out["lang"] = self.lang
        if self.seq is not None:
            out["seq"] = self.seq
        return out


@dataclass(frozen=True, slots=True)
class Ref:
    rel: str
    id: str

    def to_dict(self) -> dict[str, Any]:
        return {"rel": self.rel, "id": self.id}


@dataclass(frozen=True, slots=True)
class Block:
    """A signed knowledge block. ``id`` and ``sig`` cover every other field."""

    kind: str
    scope: str
    body: str
    meta: Meta
    author: str
    created: int  # milliseconds since the Unix epoch, UTC
    refs: tuple[Ref, ...] = ()
    v: int = FORMAT_VERSION
    id: str = ""
    sig: str = ""

    def unsigned_dict(self) -> dict[str, Any]:
        """The fields covered by the id, exactly as hashed."""
        return {
            "v": self.v,
            "kind": self.kind,
            "scope": self.scope,
            "body": self.body,
            "meta": self.meta.to_dict(),
            "author": self.author,
            "created": self.created,
            "refs": [r.to_dict() for r in self.refs],
        }

    def to_dict(self) -> dict[str, Any]:
        """The signed record as it travels (JSON export, HTTP, sync)."""
        out = self.unsigned_dict()
        out["id"] = self.id
        out["sig"] = self.sig
        return out

    @property
    def tags(self) -> tuple[str, ...]:
        return self.meta.tags


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A signed record that erases the content of block ``erases``."""

    erases: str
    author: str
    created: int
    reason: str = ""
    v: int = FORMAT_VERSION
    id: str = ""
    sig: str = ""

    def unsigned_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "erases": self.erases,
            "author": self.author,
            "created": self.created,
        }
        if self.reason:
            out["reason"] = self.reason
        return out

    def to_dict(self) -> dict[str, Any]:
        out = self.unsigned_dict()
        out["id"] = self.id
        out["sig"] = self.sig
        return out
