"""The ``ChatModel`` protocol every chat backend implements.

Backends are synchronous and may block (inference, HTTP): async callers run
them through ``kiana.offload.Offloader`` or a thread. ``stream`` yields text
pieces as they are generated and stops early when ``cancel`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


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


@dataclass(frozen=True, slots=True)
class ModelInfo:
    backend: str  # "embedded", "ollama", "openai"
    name: str
    available: bool
    detail: str = ""  # path, URL, size, or why it is unavailable
    context: int | None = None


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
