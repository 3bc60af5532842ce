"""Pick a chat backend from the settings; describe the models there are.

``open_chat_model(settings)`` is cheap: nothing is loaded, assembled or
connected until the first ``stream`` (call ``EmbeddedChatModel.load`` to warm
the embedded model up front, e.g. behind a progress bar).
"""

from __future__ import annotations

from pathlib import Path

from kiana.config import Settings
from kiana.errors import ConfigError, KianaError
from kiana.llm.assemble import assembled_path, is_ready
from kiana.llm.base import ChatModel, ModelInfo
from kiana.llm.registry import (
    KNOWN_MODELS,
    ModelSpec,
    check_gguf,
    locate_parts,
    looks_like_path,
    missing_requirements,
    pip_command,
)


def open_chat_model(settings: Settings) -> ChatModel:
    """The chat backend ``settings.chat_backend`` names, configured from ``settings``."""
    backend = settings.chat_backend
    if backend == "embedded":
        from kiana.llm.embedded import EmbeddedChatModel

        return EmbeddedChatModel(
            settings.chat_model,
            settings.model_cache_dir,
            threads=settings.chat_threads,
            context=settings.chat_context,
            timeout=settings.chat_timeout,
        )
    if backend == "ollama":
        from kiana.llm.ollama import DEFAULT_URL, OllamaChatModel

        return OllamaChatModel(
            settings.chat_model,
            settings.chat_url or DEFAULT_URL,
            timeout=settings.chat_timeout,
        )
    if backend == "openai":
        from kiana.llm.openai_compat import DEFAULT_URL as OPENAI_URL
        from kiana.llm.openai_compat import OpenAIChatModel

        return OpenAIChatModel(
            settings.chat_model,
            settings.chat_url or OPENAI_URL,
            api_key=settings.chat_api_key,
            timeout=settings.chat_timeout,
        )
    raise ConfigError(f"chat.backend must be embedded, ollama or openai, not {backend!r}")


def list_models(settings: Settings) -> list[ModelInfo]:
    """What ``kiana models`` shows.

    embedded: every registry model (installed or not, assembled or not) and,
    if ``chat_model`` is a path, that file. ollama / openai: the server's
    models; if the server cannot be asked, one unavailable entry for
    ``chat_model`` whose ``detail`` is the error. The configured model has
    ``selected=True``. Never raises for an unreachable server.
    """
    if settings.chat_backend == "embedded":
        infos = [
            describe_spec(
                spec, settings.model_cache_dir, settings.chat_context, settings.chat_model
            )
            for spec in KNOWN_MODELS
        ]
        if not any(i.selected for i in infos):
            infos.append(
                describe_embedded(
                    settings.chat_model,
                    settings.model_cache_dir,
                    settings.chat_context,
                    selected=True,
                )
            )
        return infos
    model = open_chat_model(settings)
    try:
        lister = getattr(model, "list_models", None)
        try:
            infos = list(lister()) if lister is not None else [model.info()]
        except KianaError as exc:
            return [
                ModelInfo(
                    settings.chat_backend, settings.chat_model, False, exc.message, selected=True
                )
            ]
        if not any(i.selected for i in infos):
            infos.append(model.info())
        return infos
    finally:
        model.close()


def describe_spec(
    spec: ModelSpec, cache_dir: Path, context: int, selected_name: str = ""
) -> ModelInfo:
    """A registry model: installed? assembled (or verified) in the cache yet?"""
    missing = missing_requirements(spec)
    ready = is_ready(spec, cache_dir)
    if missing:
        detail = f"not installed: {pip_command(spec, missing)}"
    elif ready:
        detail = f"{spec.title}; verified" + ("" if spec.single_file else ", assembled")
    elif spec.single_file:
        detail = f"{spec.title}; checked (sha256) on first use"
    else:
        detail = f"{spec.title}; assembled into the cache on first use ({spec.size / 1e9:.2f} GB)"
    if missing:
        path = ""
    elif spec.single_file:
        path = str(locate_parts(spec)[0])  # used in place
    else:
        path = str(assembled_path(spec, cache_dir)) if ready else ""
    return ModelInfo(
        backend="embedded",
        name=spec.name,
        available=not missing,
        detail=f"{detail}; {spec.license}",
        context=context,
        path=path,
        size_bytes=spec.size,
        assembled=ready,
        selected=spec.name == selected_name,
    )


def describe_embedded(model: str, cache_dir: Path, context: int, *, selected: bool) -> ModelInfo:
    """The configured embedded model (registry name or path), without loading it."""
    for spec in KNOWN_MODELS:
        if spec.name == model:
            return describe_spec(spec, cache_dir, context, model if selected else "")
    if not looks_like_path(model):
        names = ", ".join(s.name for s in KNOWN_MODELS)
        return ModelInfo(
            "embedded", model, False, f"unknown model; known: {names}", context, selected=selected
        )
    path = Path(model).expanduser()
    try:
        check_gguf(path)
    except KianaError as exc:
        return ModelInfo(
            "embedded", path.name, False, exc.message, context, path=str(path), selected=selected
        )
    return ModelInfo(
        "embedded",
        path.name,
        True,
        "your own GGUF file (no sha256 check)",
        context,
        path=str(path),
        size_bytes=path.stat().st_size,
        selected=selected,
    )
