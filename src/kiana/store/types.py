"""Value types returned by the store."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kiana.blocks import Block


class PutResult(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # the same block was already stored: a no-op
    ERASED = "erased"  # a tombstone for this id exists; the content is refused


@dataclass(frozen=True, slots=True)
class BlockFilter:
    kind: str | None = None
    scope: str | None = None
    tag: str | None = None
    author: str | None = None
    since: int | None = None  # created >= since (ms)
    until: int | None = None  # created < until (ms)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Block]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    block: Block
    score: float


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    sign_key: bytes
    box_key: bytes
    role: str  # "authority" or "member"
    person: str
    name: str
    added: int
    record: str  # the signed record that admitted the device (JSON)
    revoked: int | None = None  # ms timestamp of revocation, None while a member
    last_seen: int | None = None  # ms timestamp of the last authenticated contact

    @property
    def active(self) -> bool:
        return self.revoked is None


@dataclass(frozen=True, slots=True)
class StoreStats:
    blocks: int
    erased: int
    tombstones: int
    by_kind: dict[str, int]
    by_scope: dict[str, int]
    devices: int
    schema_version: int
