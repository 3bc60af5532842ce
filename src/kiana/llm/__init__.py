"""Chat model backends: embedded llama.cpp, Ollama's native API, OpenAI-compatible servers.

Start with ``open_chat_model(settings)`` (a ``ChatModel``) and ``list_models(settings)``.
Backend modules import their heavy dependencies (llama_cpp, httpx) only when used.
"""

from kiana.llm.base import (
    ChatMessage,
    ChatModel,
    ChatResult,
    ChatStream,
    GenerationOptions,
    ModelInfo,
    Usage,
    complete,
)
from kiana.llm.factory import list_models, open_chat_model

__all__ = [
    "ChatMessage",
    "ChatModel",
    "ChatResult",
    "ChatStream",
    "GenerationOptions",
    "ModelInfo",
    "Usage",
    "complete",
    "list_models",
    "open_chat_model",
]
