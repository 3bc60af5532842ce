"""End to end with the default chat model (Qwen2.5-Coder-1.5B-Instruct, 1.1 GB).

The model is assembled once into a cache shared by test runs (and by the
tests of one CI run): ``$KIANA_TEST_MODEL_CACHE``, else ``~/.cache/kiana-test``.
Later runs only check its recorded sha256, size and mtime.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiana.config import Settings
from kiana.llm import open_chat_model
from kiana.llm.base import ChatMessage, GenerationOptions, complete
from kiana.llm.embedded import EmbeddedChatModel
from kiana.llm.registry import get_spec, missing_requirements
from llm_helpers import DEFAULT

pytestmark = pytest.mark.slow

SYSTEM = ChatMessage(
    "system",
    "You are KI_ana, the family's assistant. Answer from these facts only, briefly.\n"
    "Facts:\n"
    "- The wifi password is blue-otter-42.\n"
    "- The boiler service is on 3 June.\n"
    "- Mum's birthday is 14 March.",
)


@pytest.fixture(scope="session")
def shared_model_cache() -> Path:
    raw = os.environ.get("KIANA_TEST_MODEL_CACHE")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "kiana-test"


def test_default_model_answers_with_a_fact_from_the_system_prompt(
    shared_model_cache: Path, tmp_path: Path
) -> None:
    spec = get_spec(DEFAULT)
    if missing_requirements(spec):
        pytest.skip(f"default model not installed: {spec.pip_command}")
    settings = Settings(home=tmp_path, model_cache=str(shared_model_cache), chat_context=2048)
    model = open_chat_model(settings)
    assert isinstance(model, EmbeddedChatModel)
    try:
        model.load()
        assert model.info().assembled
        greedy = GenerationOptions(max_tokens=40, temperature=0.0, seed=1)
        first = complete(model, [SYSTEM, ChatMessage("user", "What is the wifi password?")], greedy)
        assert "blue-otter-42" in first.text, first.text
        second = complete(
            model, [SYSTEM, ChatMessage("user", "When is the boiler service?")], greedy
        )
        assert "3" in second.text and "June" in second.text, second.text
        assert second.usage.extra["cached_prompt_tokens"] >= model.count_prompt_tokens([SYSTEM]) - 5
    finally:
        model.close()
