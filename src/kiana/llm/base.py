"""The ``ChatModel`` protocol every chat backend implements.

Backends are synchronous and may block (inference, HTTP): async callers run
them through ``kiana.offload.Offloader`` or a thread. ``stream`` yields text
pieces as they are generated and stops early when ``cancel`` is set.

The backends in this package return a ``ChatStream`` from ``stream``: a plain
iterator of text pieces that, once exhausted, also says how the generation
ended (``finish_reason``) and what it cost (``usage``). Setting ``cancel``
ends the iteration normally (no exception) with ``finish_reason ==
"cancelled"``; failures raise ``kiana.errors.LLMError`` subclasses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    max_tokens: int = 512
    temperature: float = 0.2
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


DEFAULT_OPTIONS = GenerationOptions()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    backend: str  # "embedded", "ollama", "openai"
    name: str
    available: bool
    detail: str = ""  # path, URL, size, or why it is unavailable
    context: int | None = None
    # Extensions (all optional): where the file is, how big, whether a packaged
    # model has been assembled into the cache yet, and whether it is the one
    # the settings select.
    path: str = ""
    size_bytes: int | None = None
    assembled: bool | None = None
    selected: bool = False


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class ChatModel(Protocol):
    @property
    def name(self) -> str: ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenerationOptions = GenerationOptions(),
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield generated text pieces; raise ``LLMError`` subclasses on failure."""
        ...

    def info(self) -> ModelInfo: ...

    def close(self) -> None: ...


class ChatStream(Iterator[str]):
    """The text pieces of one generation, plus how it ended once exhausted.

    ``produce`` is called once, immediately, with this object; it returns the
    generator of pieces and may fill in ``usage`` and ``finish_reason`` as it
    runs. Nothing is sent or computed until the first ``next()``. Close the
    stream (or use it as a context manager) when abandoning it half-way, so the
    backend releases its model lock or HTTP connection at once.
    """

    def __init__(self, produce: Callable[[ChatStream], Iterator[str]]) -> None:
        self.usage = Usage()
        self.finish_reason: FinishReason | None = None
        self._pieces = produce(self)

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    finish_reason: FinishReason | None
    usage: Usage


def complete(
    model: ChatModel,
    messages: Sequence[ChatMessage],
    options: GenerationOptions = GenerationOptions(),
    cancel: threading.Event | None = None,
) -> ChatResult:
    """Run ``model.stream`` to the end and return the whole answer."""
    pieces = model.stream(messages, options, cancel)
    try:
        text = "".join(pieces)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    if isinstance(pieces, ChatStream):
        return ChatResult(text, pieces.finish_reason, pieces.usage)
    cancelled = cancel is not None and cancel.is_set()
    return ChatResult(text, "cancelled" if cancelled else None, Usage())
