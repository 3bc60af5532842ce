"""Choosing a chat backend from the settings, and listing models for ``kiana models``."""

from __future__ import annotations

from pathlib import Path

from kiana.config import Settings
from kiana.llm import list_models, open_chat_model
from kiana.llm.assemble import ensure_model
from kiana.llm.embedded import EmbeddedChatModel
from kiana.llm.ollama import OllamaChatModel
from kiana.llm.openai_compat import OpenAIChatModel
from kiana.llm.registry import get_spec
from llm_helpers import DEFAULT, FAST, SMOLLM, smollm_path


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path / "home", model_cache=str(tmp_path / "cache"), **values)  # type: ignore[arg-type]


def test_list_models_shows_registry_models_and_whether_they_are_ready(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    infos = {i.name: i for i in list_models(settings)}
    assert list(infos) == [DEFAULT, FAST, SMOLLM]
    assert infos[DEFAULT].selected and not infos[SMOLLM].selected
    assert all(i.backend == "embedded" and i.context == 4096 for i in infos.values())
    smol = infos[SMOLLM]
    assert smol.available and smol.assembled is False and smol.size_bytes == 98_362_432
    assert smol.path == str(smollm_path())
    ensure_model(get_spec(SMOLLM), settings.model_cache_dir)
    assert {i.name: i for i in list_models(settings)}[SMOLLM].assembled is True

    own = settings_for(tmp_path, chat_model=str(smollm_path()))
    infos = {i.name: i for i in list_models(own)}
    mine = infos[smollm_path().name]
    assert mine.selected and mine.available and mine.path == str(smollm_path())
    missing = settings_for(tmp_path, chat_model=str(tmp_path / "gone.gguf"))
    gone = list_models(missing)[-1]
    assert gone.selected and not gone.available and "does not exist" in gone.detail


def test_open_chat_model_picks_the_backend_and_does_no_work(tmp_path: Path) -> None:
    embedded = open_chat_model(settings_for(tmp_path, chat_model=SMOLLM, chat_threads=1))
    assert isinstance(embedded, EmbeddedChatModel) and not embedded.loaded
    assert embedded.name == SMOLLM and embedded.info().available
    embedded.close()
    ollama = open_chat_model(settings_for(tmp_path, chat_backend="ollama", chat_model="llama3"))
    assert isinstance(ollama, OllamaChatModel)
    assert ollama.base_url == "http://127.0.0.1:11434"
    ollama.close()
    openai = open_chat_model(
        settings_for(tmp_path, chat_backend="openai", chat_url="http://127.0.0.1:9/v1/")
    )
    assert isinstance(openai, OpenAIChatModel) and openai.base_url == "http://127.0.0.1:9/v1"
    openai.close()
