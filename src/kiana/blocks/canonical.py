"""Canonical byte encoding shared by every signed record.

Rules (also in ``docs/block-format.md``):

* the value is a JSON object whose values are strings, integers in
  ``[0, 2**53)``, lists or objects of the same — no floats, booleans or null;
* object keys are sorted by Unicode code point, no insignificant whitespace,
  ``,`` and ``:`` as separators;
* strings are emitted as UTF-8, escaping only ``"``, ``\\`` and control
  characters below U+0020 (``\\n``, ``\\t`` ... or ``\\u00XX``);
* the id of a record is the lowercase hex SHA-256 of these bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_INT = 2**53 - 1


def canonical_bytes(value: dict[str, Any]) -> bytes:
    """Encode ``value`` canonically. Raises ``ValueError`` for unencodable values."""
    _check(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")  # raises UnicodeEncodeError (a ValueError) on lone surrogates


def record_id(value: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def _check(value: object) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise ValueError(f"{type(value).__name__} values are not allowed in canonical records")
    if isinstance(value, int):
        if not 0 <= value <= MAX_INT:
            raise ValueError("integers must be within 0..2**53-1")
    elif isinstance(value, str):
        return
    elif isinstance(value, list):
        for item in value:
            _check(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            _check(item)
    else:
        raise ValueError(f"{type(value).__name__} values are not allowed in canonical records")
