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


# -- the assistant ----------------------------------------------------------------------

MAX_CHAT_TOKENS = 8192
CONVERSATION_ID = r"^c-[0-9A-Za-z]{1,38}$"


class ChatIn(_In):
    message: Utf8 = Field(
        description="The question, or 'remember that ...' to store a fact (at most 8000 "
        "characters; checked by the assistant)."
    )
    conversation_id: str | None = Field(
        None, max_length=40, description="Continue this conversation; omit to start one."
    )
    use_memory: bool = Field(True, description="Retrieve memory blocks for the prompt.")
    learn: bool = Field(True, description="Act on 'remember that ...' by storing a fact.")
    stream: bool = Field(True, description="Server-Sent Events; false answers one JSON object.")
    kind: Kind | None = Field(None, description="Retrieve only blocks of this kind.")
    scope: Scope | None = Field(None, description="Retrieve only blocks in this scope.")
    tag: Tag | None = Field(None, description="Retrieve only blocks with this tag.")
    max_tokens: int | None = Field(None, ge=1, le=MAX_CHAT_TOKENS, description="Longest answer.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="For repeatable answers.")


class SourceOut(BaseModel):
    n: int = Field(description="The number the prompt gave this block; citations use it.")
    id: str
    kind: str
    created: int
    author: str
    similarity: float | None = Field(description="Cosine similarity, when vector search saw it.")
    score: float = Field(description="Fused retrieval score.")
    via: list[str] = Field(description="Which rankings found it: keyword, vector.")
    text: str = Field(description="The start of the block body.")


class CitationProvenanceOut(BaseModel):
    author: str
    author_name: str
    role: str
    created: int
    valid: bool = Field(description="The block's signature verifies.")
    error: str


class CitationOut(BaseModel):
    n: int
    block: BlockRecord = Field(description="The full signed record.")
    provenance: CitationProvenanceOut


class UsageOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AnswerOut(BaseModel):
    """The ``answer`` event."""

    text: str
    conversation_id: str | None
    cancelled: bool
    finish_reason: str | None = Field(description="stop, length or cancelled, when known.")
    usage: UsageOut | None
    citations: list[CitationOut]


class LearnedOut(BaseModel):
    """The ``learned`` event: "remember that ..." stored (or found) this block."""

    created: bool
    block: BlockRecord


class ChatOut(AnswerOut):
    """The answer with ``stream: false``."""

    sources: list[SourceOut]
    learned: list[LearnedOut]


class ConversationSummaryOut(BaseModel):
    id: str
    title: str
    created: int
    updated: int


class ConversationsOut(BaseModel):
    conversations: list[ConversationSummaryOut]


class TurnOut(BaseModel):
    role: str
    content: str
    citations: list[str] = Field(description="Ids of the blocks the answer cited.")
    created: int


class ConversationOut(ConversationSummaryOut):
    turns: list[TurnOut]


class DeletedOut(BaseModel):
    id: str
    deleted: bool


class ModelInfoOut(BaseModel):
    backend: str
    name: str
    available: bool
    detail: str
    context: int | None
    path: str
    size_bytes: int | None
    assembled: bool | None
    selected: bool


class ChatModelsOut(BaseModel):
    backend: str
    model: str = Field(description="The configured chat model (chat.model).")
    models: list[ModelInfoOut]


class EmbeddingStatusOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    available: bool
    detail: str = ""


class ModelsOut(BaseModel):
    chat: ChatModelsOut
    embeddings: EmbeddingStatusOut


class ReindexOut(BaseModel):
    model: str
    embedded: int
    missing_before: int
    seconds: float
