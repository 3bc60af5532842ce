"""Proposing facts worth remembering from what the user said, as JSON.

The model is asked for a JSON array of short, self-contained statements; its
output is parsed defensively (the first JSON array in the text, strings only,
trimmed, deduplicated, bounded) and never stored without the user's consent:
the CLI asks before each one, the API returns proposals for the client to
confirm with ``POST /api/v1/blocks``.
"""

from __future__ import annotations

import json
import re
import threading

from kiana.errors import InputError
from kiana.llm.base import ChatMessage, ChatModel, GenerationOptions

EXTRACT_PROMPT = (
    "Extract the facts worth remembering long-term from the user's text: appointments, "
    "dates, names, numbers, preferences, where things are. Write each fact as one short, "
    "self-contained sentence in the language of the text, with names instead of pronouns. "
    "Ignore questions, greetings and anything uncertain. Reply with only a JSON array of "
    'strings, for example ["The dentist appointment is on 3 March."]. Reply [] if there is '
    "nothing to remember."
)
_EXAMPLE = (
    ChatMessage(
        "user",
        "Text:\nHello! The plumber comes on Friday at 8, and Anna's new number is 0171-555-0101. "
        "Can you help me?\n\nJSON array of facts:",
    ),
    ChatMessage(
        "assistant",
        '["The plumber comes on Friday at 8.", "Anna\'s new phone number is 0171-555-0101."]',
    ),
)
MAX_TEXT = 4000
MAX_FACTS = 10
MAX_FACT_CHARS = 300
_ARRAY = re.compile(r"\[.*?\]", re.DOTALL)


def parse_facts(output: str) -> list[str]:
    """The facts in a model's reply; anything that is not a JSON array of strings is ignored."""
    facts: list[str] = []
    for match in _ARRAY.finditer(output):  # small models sometimes write one array per fact
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, str):
                text = " ".join(item.split())
                if 3 <= len(text) <= MAX_FACT_CHARS and text not in facts:
                    facts.append(text)
    return facts[:MAX_FACTS]


def propose_facts(model: ChatModel, text: str, cancel: threading.Event | None = None) -> list[str]:
    """Ask the model which facts in ``text`` are worth remembering. Blocking."""
    text = text.strip()
    if not text:
        raise InputError("nothing to extract facts from: the text is empty")
    if len(text) > MAX_TEXT:
        raise InputError(f"the text is longer than {MAX_TEXT} characters")
    messages = [
        ChatMessage("system", EXTRACT_PROMPT),
        *_EXAMPLE,
        ChatMessage("user", f"Text:\n{text}\n\nJSON array of facts:"),
    ]
    options = GenerationOptions(max_tokens=256, temperature=0.0, seed=1)
    output = "".join(model.stream(messages, options, cancel))
    return parse_facts(output)
