"""Parse untrusted records into blocks and tombstones, with one typed error per fault.

Parsing checks structure only (types, required and unknown fields, allowed
values, size limits). Cryptographic checks live in ``signing``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kiana.blocks.canonical import MAX_INT
from kiana.blocks.model import (
    FORMAT_VERSION,
    KINDS,
    REF_RELATIONS,
    SCOPES,
    Block,
    Meta,
    Ref,
    Tombstone,
)
from kiana.errors import (
    MalformedBlockError,
    OversizedBlockError,
    UnknownFormatError,
    UnknownKindError,
)

DEFAULT_MAX_BODY = 1024 * 1024
MAX_TITLE = 1000
MAX_TAGS = 64
MAX_TAG_LEN = 100
MAX_SOURCE = 4096
MAX_REFS = 64
MAX_REASON = 1000

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX128 = re.compile(r"^[0-9a-f]{128}$")
DEVICE_ID = re.compile(r"^[a-z2-7]{4}(-[a-z2-7]{4}){3}$")
LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")

_BLOCK_FIELDS = frozenset({"v", "kind", "scope", "body", "meta", "author", "created", "refs"})
_META_FIELDS = frozenset({"title", "tags", "source", "lang", "seq"})
_TOMB_FIELDS = frozenset({"v", "erases", "author", "created"})


def loads_record(data: str | bytes) -> dict[str, Any]:
    """Decode one JSON record; anything but a JSON object is malformed."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8
        raise MalformedBlockError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedBlockError("a record must be a JSON object")
    return value


def parse_block(record: object, *, max_body: int = DEFAULT_MAX_BODY, signed: bool = True) -> Block:
    """Turn a decoded JSON object into a ``Block`` or raise a ``BlockError``.

    With ``signed=True`` the record must carry ``id`` and ``sig``.
    """
    obj = _object(record, "block")
    version = obj.get("v")
    if "v" not in obj or not _is_int(version):
        raise MalformedBlockError("field 'v' (format version) must be an integer")
    if version != FORMAT_VERSION:
        raise UnknownFormatError(f"unknown block format version {version}")
    expected = _BLOCK_FIELDS | ({"id", "sig"} if signed else set())
    _exact_fields(obj, expected, "block")

    kind = _str(obj, "kind")
    if kind not in KINDS:
        raise UnknownKindError(f"unknown block kind {kind!r}; allowed: {', '.join(sorted(KINDS))}")
    scope = _str(obj, "scope")
    if scope not in SCOPES:
        raise UnknownKindError(f"unknown scope {scope!r}; allowed: private, shared")
    body = _str(obj, "body")
    size = _utf8_len(body)
    if size > max_body:
        raise OversizedBlockError(f"body is {size} bytes; the limit is {max_body}")
    author = _device(obj, "author")
    created = _int(obj, "created")
    meta = _meta(obj["meta"])
    refs = _refs(obj["refs"])
    block_id = _hex(obj, "id", HEX64) if signed else ""
    sig = _hex(obj, "sig", HEX128) if signed else ""
    return Block(
        kind=kind,
        scope=scope,
        body=body,
        meta=meta,
        author=author,
        created=created,
        refs=refs,
        v=version,
        id=block_id,
        sig=sig,
    )


def parse_tombstone(record: object) -> Tombstone:
    obj = _object(record, "tombstone")
    version = obj.get("v")
    if not _is_int(version):
        raise MalformedBlockError("field 'v' (format version) must be an integer")
    if version != FORMAT_VERSION:
        raise UnknownFormatError(f"unknown tombstone format version {version}")
    allowed = _TOMB_FIELDS | {"id", "sig", "reason"}
    _exact_fields(obj, allowed, "tombstone", optional=frozenset({"reason"}))
    reason = _str(obj, "reason") if "reason" in obj else ""
    if len(reason) > MAX_REASON:
        raise MalformedBlockError(f"reason longer than {MAX_REASON} characters")
    if "reason" in obj and not reason:
        raise MalformedBlockError("an empty 'reason' must be omitted")
    return Tombstone(
        erases=_hex(obj, "erases", HEX64),
        author=_device(obj, "author"),
        created=_int(obj, "created"),
        reason=reason,
        v=version,
        id=_hex(obj, "id", HEX64),
        sig=_hex(obj, "sig", HEX128),
    )


# -- helpers -----------------------------------------------------------------


def _object(record: object, what: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise MalformedBlockError(f"a {what} must be a JSON object")
    return record


def _exact_fields(
    obj: dict[str, Any],
    expected: set[str] | frozenset[str],
    what: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    keys = set(obj)
    missing = sorted(set(expected) - optional - keys)
    extra = sorted(keys - set(expected))
    if missing:
        raise MalformedBlockError(f"{what} is missing field(s): {', '.join(missing)}")
    if extra:
        raise MalformedBlockError(f"{what} has unknown field(s): {', '.join(extra[:5])}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise MalformedBlockError(f"field {key!r} must be a string")
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if not _is_int(value) or not 0 <= value <= MAX_INT:
        raise MalformedBlockError(f"field {key!r} must be an integer within 0..2**53-1")
    return int(value)


def _hex(obj: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = _str(obj, key)
    if not pattern.fullmatch(value):
        raise MalformedBlockError(f"field {key!r} is not lowercase hex of the right length")
    return value


def _device(obj: dict[str, Any], key: str) -> str:
    value = _str(obj, key)
    if not DEVICE_ID.fullmatch(value):
        raise MalformedBlockError(f"field {key!r} is not a device id (xxxx-xxxx-xxxx-xxxx)")
    return value


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise MalformedBlockError("text contains invalid Unicode (lone surrogate)") from exc


def _meta(value: object) -> Meta:
    if not isinstance(value, dict):
        raise MalformedBlockError("field 'meta' must be an object")
    extra = sorted(set(value) - _META_FIELDS)
    if extra:
        raise MalformedBlockError(f"meta has unknown field(s): {', '.join(extra[:5])}")
    title = _opt_str(value, "title", MAX_TITLE)
    source = _opt_str(value, "source", MAX_SOURCE)
    lang = _opt_str(value, "lang", 35)
    if lang and not LANG.fullmatch(lang):
        raise MalformedBlockError("meta.lang must be a language tag such as 'en' or 'de-AT'")
    seq: int | None = None
    if "seq" in value:
        seq = _int(value, "seq")
    tags: tuple[str, ...] = ()
    if "tags" in value:
        raw = value["tags"]
        if not isinstance(raw, list) or not raw:
            raise MalformedBlockError("meta.tags must be a non-empty list (omit it when empty)")
        if len(raw) > MAX_TAGS:
            raise MalformedBlockError(f"at most {MAX_TAGS} tags")
        for tag in raw:
            if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_LEN or tag != tag.strip():
                raise MalformedBlockError(
                    f"each tag must be a trimmed string of 1..{MAX_TAG_LEN} chars"
                )
        if raw != sorted(set(raw)):
            raise MalformedBlockError("meta.tags must be sorted and unique")
        tags = tuple(raw)
    return Meta(title=title, tags=tags, source=source, lang=lang, seq=seq)


def _opt_str(obj: dict[str, Any], key: str, limit: int) -> str:
    if key not in obj:
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise MalformedBlockError(f"meta.{key} must be a string")
    if not value:
        raise MalformedBlockError(f"an empty meta.{key} must be omitted")
    if len(value) > limit:
        raise MalformedBlockError(f"meta.{key} longer than {limit} characters")
    _utf8_len(value)
    return value


def _refs(value: object) -> tuple[Ref, ...]:
    if not isinstance(value, list):
        raise MalformedBlockError("field 'refs' must be a list")
    if len(value) > MAX_REFS:
        raise MalformedBlockError(f"at most {MAX_REFS} refs")
    out: list[Ref] = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"rel", "id"}:
            raise MalformedBlockError("each ref must be an object with exactly 'rel' and 'id'")
        rel = _str(item, "rel")
        if rel not in REF_RELATIONS:
            raise MalformedBlockError(f"unknown ref relation {rel!r}")
        out.append(Ref(rel=rel, id=_hex(item, "id", HEX64)))
    return tuple(out)


def normalise_tags(tags: object) -> tuple[str, ...]:
    """Trim, drop empties, dedupe and sort user-supplied tags."""
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list | tuple):
        raise MalformedBlockError("tags must be a list of strings")
    cleaned = {t.strip() for t in tags if isinstance(t, str) and t.strip()}
    if any(not isinstance(t, str) for t in tags):
        raise MalformedBlockError("tags must be a list of strings")
    return tuple(sorted(cleaned))
