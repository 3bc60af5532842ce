"""Request and response models of the OpenAI-compatible routes (``/v1``).

Requests accept (and ignore) the many OpenAI fields KI_ana has no use for, so
any OpenAI client works; what cannot be honoured (several choices, tool
calling, non-text content) is refused with 400 rather than silently dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiana.api.schemas import MAX_CHAT_TOKENS, Kind, Scope, Tag, Utf8

MAX_MESSAGES = 1000
MAX_STOP = 4
MAX_EMBED_INPUTS = 2048


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: Literal["text"] = Field(description="Only text content is supported.")
    text: Utf8


class MessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Utf8 | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class KianaOptions(BaseModel):
    """KI_ana's own request field: ``"kiana": {"memory": false}``."""

    model_config = ConfigDict(extra="forbid")

    memory: bool | None = Field(None, description="Inject retrieved memory (default true).")
    kind: Kind | None = Field(None, description="Retrieve only blocks of this kind.")
    scope: Scope | None = Field(None, description="Retrieve only blocks in this scope.")
    tag: Tag | None = Field(None, description="Retrieve only blocks with this tag.")


class ChatCompletionIn(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_CHAT_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_CHAT_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int | None = Field(None, description="Only one choice (n = 1) is generated.")
    tools: list[dict[str, object]] | None = Field(
        None, description="Tool calling is not supported (only an empty list is accepted)."
    )
    kiana: KianaOptions | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n = 1 is supported")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[dict[str, object]] | None) -> list[dict[str, object]] | None:
        if value:
            raise ValueError("tool calling is not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class EmbeddingsIn(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    input: Utf8 | list[Utf8] = Field(description="Text or a list of texts (not token arrays).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > MAX_EMBED_INPUTS:
            raise ValueError(f"input takes 1 to {MAX_EMBED_INPUTS} texts")
        if any(not t.strip() for t in texts):
            raise ValueError("input texts must not be empty")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- responses (for /openapi.json; the routes build plain dicts) --------------------------


class ModelObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class CompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class CompletionChoice(BaseModel):
    index: int
    message: CompletionMessage
    finish_reason: str


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(BaseModel):
    """``chat.completion``; the extra ``kiana`` field holds memory sources and citations."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class EmbeddingObject(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of float32 LE bytes.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="Estimated (about 3.5 characters per token).")
    total_tokens: int


class EmbeddingsOut(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage
