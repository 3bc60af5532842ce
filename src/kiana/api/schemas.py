"""Request and response models: validation at the edge, and the shapes /openapi.json shows.

Block records are returned exactly as signed (``Block.to_dict()``): routes
use ``response_model_exclude_unset`` so empty meta fields stay omitted and a
client can verify or re-post what it receives.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from kiana.blocks.codec import LANG, MAX_TAG_LEN, MAX_TAGS, MAX_TITLE

Kind = Literal["chunk", "conversation", "fact", "note", "summary"]
"""Must equal ``kiana.blocks.KINDS`` (checked by the tests)."""
Scope = Literal["private", "shared"]
"""Must equal ``kiana.blocks.SCOPES``."""

ID_PREFIX = r"^[0-9a-fA-F]{6,64}$"


def _encodable(value: str) -> str:
    """JSON can carry lone surrogates (\\ud800); they cannot be stored or signed."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains invalid Unicode (a lone surrogate)") from None
    return value


Utf8 = Annotated[str, AfterValidator(_encodable)]
Tag = Annotated[
    Utf8, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_LEN)
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RememberIn(_In):
    text: Utf8 = Field(min_length=1, description="What to remember (the block body).")
    kind: Kind = "fact"
    scope: Scope = "shared"
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    title: Utf8 = Field("", max_length=MAX_TITLE)
    lang: str = Field("", max_length=35, pattern=f"^$|{LANG.pattern}")
    supersedes: str | None = Field(
        None, pattern=ID_PREFIX, description="Id (or unique prefix) of the block this replaces."
    )


# -- signed records ---------------------------------------------------------------------


class MetaRecord(BaseModel):
    title: str | None = None
    tags: list[str] | None = None
    source: str | None = None
    lang: str | None = None
    seq: int | None = None


class RefRecord(BaseModel):
    rel: str
    id: str


class BlockRecord(BaseModel):
    """A signed knowledge block as it travels (see docs/block-format.md)."""

    model_config = ConfigDict(extra="forbid")

    v: int
    id: str = Field(description="Lowercase hex SHA-256 of the canonical unsigned record.")
    kind: str
    scope: str
    body: str
    meta: MetaRecord
    author: str = Field(description="Device id of the signer.")
    created: int = Field(description="Milliseconds since the Unix epoch, UTC.")
    refs: list[RefRecord]
    sig: str = Field(description="Ed25519 signature, lowercase hex.")


class TombstoneRecord(BaseModel):
    """A signed record that erases the content of block ``erases``."""

    v: int
    id: str
    erases: str
    author: str
    created: int
    reason: str | None = None
    sig: str


class ProvenanceOut(BaseModel):
    block_id: str
    author: str
    author_name: str
    author_role: str
    created: int
    valid: bool
    error: str = Field(description="Error code when the block does not verify, else empty.")


# -- responses --------------------------------------------------------------------------


class RememberOut(BaseModel):
    created: bool = Field(description="False when an identical block already existed.")
    block: BlockRecord


class PutSignedOut(BaseModel):
    result: Literal["stored", "duplicate"]
    block: BlockRecord


class BlockOut(BaseModel):
    block: BlockRecord
    provenance: ProvenanceOut


class BlockPage(BaseModel):
    items: list[BlockRecord]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at end.")


class SearchHitOut(BaseModel):
    score: float
    block: BlockRecord


class SearchOut(BaseModel):
    hits: list[SearchHitOut]


class ImportErrorOut(BaseModel):
    line: int
    code: str
    message: str


class ImportOut(BaseModel):
    ok: bool
    lines: int
    stored: int
    duplicates: int
    refused_erased: int
    tombstones: int
    errors: list[ImportErrorOut] = Field(description="The first errors, by line number.")
    errors_total: int


class DeviceOut(BaseModel):
    device_id: str
    name: str
    role: str
    person: str
    added: int
    sign_key: str = Field(description="Ed25519 public key, hex.")
    box_key: str = Field(description="X25519 public key, hex.")


class DevicesOut(BaseModel):
    devices: list[DeviceOut]


class MindInfo(BaseModel):
    id: str
    name: str
    created: int


class DeviceInfo(BaseModel):
    id: str
    name: str


class StorageInfo(BaseModel):
    backend: str
    location: str
    schema_version: int


class BlockCounts(BaseModel):
    total: int
    by_kind: dict[str, int]
    by_scope: dict[str, int]
    erased: int
    tombstones: int


class StatusOut(BaseModel):
    mind: MindInfo
    device: DeviceInfo
    storage: StorageInfo
    blocks: BlockCounts
    devices: int


class HealthOut(BaseModel):
    status: str


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable machine-readable error code.")
    message: str


class ErrorOut(BaseModel):
    error: ErrorInfo
