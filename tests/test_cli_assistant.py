"""kiana ask / chat / models / reindex through the real CLI (SmolLM2 + MiniLM)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers_cli import run_kiana, strip_ansi
from kiana.cli.main import cli


def cache() -> str:
    raw = os.environ.get("KIANA_TEST_MODEL_CACHE")
    return str(Path(raw).expanduser() if raw else Path.home() / ".cache" / "kiana-test")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "KIANA_HOME": str(tmp_path / "home"),
        "KIANA_MODEL_CACHE": cache(),
        "KIANA_CHAT_MODEL": "smollm2-135m-instruct",
        "KIANA_CHAT_THREADS": "2",
        "KIANA_CHAT_CONTEXT": "2048",
    }


def invoke(env: dict[str, str], *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
    return result.exit_code, strip_ansi(result.stdout)


def test_ask_json_cites_signed_blocks(env: dict[str, str]) -> None:
    assert invoke(env, "init")[0] == 0
    assert invoke(env, "remember", "The boiler service is on 3 June.")[0] == 0
    code, text = invoke(env, "ask", "--json", "--max-tokens", "24", "When is the boiler service?")
    assert code == 0
    data = json.loads(text)
    assert data["conversation_id"].startswith("c-")
    assert data["sources"] and data["answer"]
    for c in data["citations"]:
        assert c["valid"] is True and c["block"]["body"]
    # continuing the conversation
    code, text = invoke(
        env, "ask", "--json", "-c", data["conversation_id"], "--max-tokens", "8", "And?"
    )
    assert code == 0 and json.loads(text)["conversation_id"] == data["conversation_id"]


def test_ask_remember_that_and_errors(env: dict[str, str]) -> None:
    invoke(env, "init")
    code, text = invoke(env, "ask", "--json", "remember that the bins go out on Tuesday")
    assert code == 0
    learned = json.loads(text)["learned"]
    assert [b["body"] for b in learned] == ["The bins go out on Tuesday."]
    code, listing = invoke(env, "blocks", "list", "--json")
    assert [b["body"] for b in json.loads(listing)["items"]] == ["The bins go out on Tuesday."]
    result = CliRunner().invoke(cli, ["ask", "   "], env=env)
    assert result.exit_code == 1 and "question is empty" in result.stderr
    result = CliRunner().invoke(cli, ["ask", "-c", "c-0000000000000000", "hi"], env=env)
    assert result.exit_code == 4 and "no conversation" in result.stderr


def test_chat_repl_remembers_and_answers(env: dict[str, str]) -> None:
    invoke(env, "init")
    session = (
        "remember that the piano lesson is on Thursday\nWhen is the piano lesson?\n/new\n/quit\n"
    )
    code, text = invoke(env, "chat", "--max-tokens", "16", input=session)
    assert code == 0
    assert "I'll remember that: The piano lesson is on Thursday." in text
    code, listing = invoke(env, "search", "--json", "piano")
    assert json.loads(listing)[0]["block"]["body"] == "The piano lesson is on Thursday."


def test_models_and_reindex(env: dict[str, str]) -> None:
    invoke(env, "init")
    invoke(env, "remember", "A fact to embed.")
    code, text = invoke(env, "models", "--json")
    assert code == 0
    data = json.loads(text)
    selected = [m for m in data["chat"] if m["selected"]]
    assert [m["name"] for m in selected] == ["smollm2-135m-instruct"]
    assert data["embeddings"]["model"] == "all-minilm-l6-v2" and data["embeddings"]["vectors"] == 1
    code, text = invoke(env, "reindex", "--json")
    assert code == 0 and json.loads(text)["embedded"] == 0


def test_ask_with_backend_down_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_kiana(home, "init")
    env = {
        "KIANA_CHAT_BACKEND": "openai",
        "KIANA_CHAT_URL": "http://127.0.0.1:9/v1",
        "KIANA_MODEL_CACHE": cache(),
    }
    result = run_kiana(home, "ask", "hello there", env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr


def test_chat_extract_asks_before_storing(env: dict[str, str]) -> None:
    invoke(env, "init")
    # the input ends at the first proposal: unanswered means declined, nothing is stored
    session = "The plumber comes on Friday at 8 and Anna's number is 0171-555-0101.\n"
    code, _ = invoke(env, "chat", "--extract", "--max-tokens", "8", input=session)
    assert code == 0
    code, listing = invoke(env, "blocks", "list", "--json")
    assert json.loads(listing)["items"] == []


def test_chat_extract_stores_an_accepted_fact(env: dict[str, str]) -> None:
    invoke(env, "init")
    session = "The plumber comes on Friday at 8.\ny\n"  # accept the first proposal, then input ends
    code, _ = invoke(env, "chat", "--extract", "--max-tokens", "8", input=session)
    assert code == 0
    code, listing = invoke(env, "blocks", "list", "--json")
    items = json.loads(listing)["items"]
    assert len(items) == 1 and items[0]["kind"] == "fact" and "plumber" in items[0]["body"].lower()


def test_add_no_embed_then_reindex(env: dict[str, str], tmp_path: Path) -> None:
    invoke(env, "init")
    note = tmp_path / "note.md"
    note.write_text("# Garden\n\nThe lemon tree goes into the cellar before the first frost.\n")
    assert invoke(env, "add", "--no-embed", str(note))[0] == 0
    assert json.loads(invoke(env, "models", "--json")[1])["embeddings"]["missing"] == 1
    code, text = invoke(env, "reindex", "--json")
    assert code == 0 and json.loads(text)["embedded"] == 1
    assert json.loads(invoke(env, "models", "--json")[1])["embeddings"]["missing"] == 0
