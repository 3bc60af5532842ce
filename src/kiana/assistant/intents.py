"""Recognising 'remember that ...' in chat, in English and German."""

from __future__ import annotations

import re

_REMEMBER = re.compile(
    r"""^\s*(?:please\s+|bitte\s+)?
        (?:remember|note|merke?\s+dir|merk\s+dir|notiere)
        \s*[:,]?\s+
        (?:(?:that|dass)\s+)?
        (?P<fact>.+?)\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


def remember_intent(message: str) -> str | None:
    """The fact to store if the message asks to remember something, else ``None``."""
    match = _REMEMBER.match(message)
    if not match:
        return None
    fact = match.group("fact").strip().rstrip(".!").strip()
    if not fact:
        return None
    return fact[0].upper() + fact[1:] + "."
