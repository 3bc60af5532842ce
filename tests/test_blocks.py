"""Knowledge blocks: canonical encoding, signing, parsing and every typed error."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiana.blocks import (
    FORMAT_VERSION,
    KINDS,
    REF_RELATIONS,
    SCOPES,
    Block,
    Ref,
    Tombstone,
    make_block,
    make_tombstone,
    parse_block,
    parse_tombstone,
    verify_block,
    verify_tombstone,
)
from kiana.blocks.canonical import MAX_INT, canonical_bytes, record_id
from kiana.blocks.codec import (
    DEFAULT_MAX_BODY,
    MAX_REASON,
    MAX_REFS,
    MAX_SOURCE,
    MAX_TAG_LEN,
    MAX_TAGS,
    MAX_TITLE,
    loads_record,
    normalise_tags,
)
from kiana.blocks.model import BLOCK_DOMAIN, TOMBSTONE_DOMAIN
from kiana.errors import (
    BadSignatureError,
    BlockError,
    IdMismatchError,
    KianaError,
    MalformedBlockError,
    OversizedBlockError,
    UnknownAuthorError,
    UnknownFormatError,
    UnknownKindError,
)
from kiana.identity import DeviceKeys

# Module-level keys so hypothesis tests need no function-scoped fixtures.
KEYS = DeviceKeys.generate()
OTHER = DeviceKeys.generate()
STRANGER = DeviceKeys.generate()  # never known to the lookup
KNOWN = {KEYS.device_id: KEYS.sign_public, OTHER.device_id: OTHER.sign_public}
CREATED = 1_704_067_200_000
HEX = "0123456789abcdef"


def lookup(device_id: str) -> bytes | None:
    return KNOWN.get(device_id)


def sample_block(**overrides: Any) -> Block:
    fields: dict[str, Any] = {
        "kind": "note",
        "body": "Grüße aus München — ein Test.",
        "created": CREATED,
        "scope": "private",
        "title": "Gruß",
        "tags": ["reise", "bayern"],
        "source": "notes/muenchen.md",
        "lang": "de-AT",
        "seq": 3,
        "refs": [Ref("part_of", "a" * 64)],
    }
    fields.update(overrides)
    return make_block(KEYS.signing, KEYS.device_id, **fields)


def sample_record(**overrides: Any) -> dict[str, Any]:
    return sample_block(**overrides).to_dict()


def parse_and_verify(record: object) -> Block:
    block = parse_block(record)
    verify_block(block, lookup)
    return block


# -- canonical encoding --------------------------------------------------------


def test_canonical_sorts_keys_recursively_without_whitespace() -> None:
    value = {"b": 1, "a": {"d": [3, {"z": "", "y": []}], "c": "x"}}
    assert canonical_bytes(value) == b'{"a":{"c":"x","d":[3,{"y":[],"z":""}]},"b":1}'


def test_canonical_key_order_is_unicode_code_point_order() -> None:
    # UTF-16 order would put the emoji (surrogate D83D) before U+FFFF.
    value = {"\U0001f600": 1, "\uffff": 2, "é": 3, "a": 4, "B": 5}
    assert canonical_bytes(value) == '{"B":5,"a":4,"é":3,"\uffff":2,"\U0001f600":1}'.encode()


def test_canonical_emits_utf8_and_escapes_only_quote_backslash_and_controls() -> None:
    text = 'ü€😀"\\\n\t\r\x08\x0c\x01\x1f\x7f/\u2028<'
    expected = '{"s":"ü€😀\\"\\\\\\n\\t\\r\\b\\f\\u0001\\u001f\x7f/\u2028<"}'
    assert canonical_bytes({"s": text}) == expected.encode("utf-8")


def test_canonical_integer_bounds() -> None:
    assert canonical_bytes({"n": 0, "m": MAX_INT}) == b'{"m":9007199254740991,"n":0}'
    assert MAX_INT == 2**53 - 1
    for bad in (-1, 2**53, 10**30):
        with pytest.raises(ValueError, match="integers"):
            canonical_bytes({"n": bad})


@pytest.mark.parametrize(
    "value",
    [
        {"f": 1.0},
        {"f": 0.5},
        {"b": True},
        {"b": False},
        {"n": None},
        {"nested": [1, {"x": None}]},
        {"t": (1, 2)},
        {"raw": b"bytes"},
        {"set": {1}},
        {1: "non-string key"},
        {"deep": {"x": {2: "y"}}},
    ],
    ids=repr,
)
def test_canonical_rejects_values_outside_the_subset(value: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        canonical_bytes(value)


def test_canonical_rejects_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        canonical_bytes({"s": "\ud800"})


def test_record_id_is_sha256_of_canonical_bytes() -> None:
    value = {"z": "Ä", "a": [1, 2]}
    assert record_id(value) == hashlib.sha256('{"a":[1,2],"z":"Ä"}'.encode()).hexdigest()


json_scalars = st.one_of(st.text(max_size=20), st.integers(min_value=0, max_value=MAX_INT))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@settings(max_examples=150)
@given(json_objects)
def test_canonical_encoding_round_trips_and_is_a_fixed_point(value: dict[str, Any]) -> None:
    data = canonical_bytes(value)
    decoded = json.loads(data)
    assert decoded == value
    assert canonical_bytes(decoded) == data
    # Insertion order never matters.
    assert canonical_bytes(dict(reversed(list(value.items())))) == data
    # No insignificant whitespace, and control characters are always escaped.
    assert all(byte >= 0x20 for byte in data)
    assert data.decode("utf-8")


# -- make / verify -------------------------------------------------------------


def test_make_block_signs_the_documented_digest() -> None:
    block = sample_block()
    digest = hashlib.sha256(canonical_bytes(block.unsigned_dict())).digest()
    assert block.id == digest.hex()
    assert block.author == KEYS.device_id
    # Ed25519 over DOMAIN || sha256(canonical bytes), verifiable without KI_ana code.
    KEYS.signing.verify_key.verify(BLOCK_DOMAIN + digest, bytes.fromhex(block.sig))
    verify_block(block, lookup)


def test_make_block_is_deterministic() -> None:
    assert sample_block() == sample_block()
    assert sample_block().id != sample_block(body="anders").id


def test_make_block_normalises_tags_and_title() -> None:
    block = sample_block(title="  Titel \n", tags=[" b", "a", "b", "", "  "])
    assert block.meta.title == "Titel"
    assert block.tags == ("a", "b")
    assert block.to_dict()["meta"]["tags"] == ["a", "b"]


def test_empty_meta_fields_are_omitted_from_the_record() -> None:
    block = make_block(KEYS.signing, KEYS.device_id, kind="fact", body="x", created=0)
    record = block.to_dict()
    assert record["meta"] == {}
    assert record["refs"] == []
    assert set(record) == {"v", "kind", "scope", "body", "meta", "author", "created", "refs"} | {
        "id",
        "sig",
    }
    assert record["v"] == FORMAT_VERSION
    assert record["scope"] == "shared"
    assert parse_and_verify(record) == block


def test_record_survives_json_round_trip() -> None:
    block = sample_block()
    text = json.dumps(block.to_dict(), indent=2, ensure_ascii=True)  # any valid JSON form
    assert parse_and_verify(loads_record(text)) == block
    assert parse_and_verify(loads_record(text.encode("utf-8"))) == block


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"kind": "memo"}, UnknownKindError),
        ({"scope": "public"}, UnknownKindError),
        ({"lang": "Deutsch"}, MalformedBlockError),
        ({"tags": [f"t{i:03d}" for i in range(MAX_TAGS + 1)]}, MalformedBlockError),
        ({"tags": ["x" * (MAX_TAG_LEN + 1)]}, MalformedBlockError),
        ({"created": -1}, MalformedBlockError),
        ({"created": 2**53}, MalformedBlockError),
        ({"seq": -5}, MalformedBlockError),
        ({"title": "x" * (MAX_TITLE + 1)}, MalformedBlockError),
        ({"source": "s" * (MAX_SOURCE + 1)}, MalformedBlockError),
        ({"refs": [Ref("cites", "a" * 64)]}, MalformedBlockError),
        ({"refs": [Ref("part_of", "A" * 64)]}, MalformedBlockError),
        ({"refs": [Ref("part_of", "a" * 64)] * (MAX_REFS + 1)}, MalformedBlockError),
        ({"body": "lone \ud800 surrogate"}, MalformedBlockError),
        ({"body": "ü" * 6, "max_body": 11}, OversizedBlockError),
    ],
    ids=repr,
)
def test_make_block_validates_with_the_receivers_rules(
    overrides: dict[str, Any], error: type[BlockError]
) -> None:
    with pytest.raises(error):
        sample_block(**overrides)


def test_make_block_body_limit_is_in_utf8_bytes() -> None:
    assert sample_block(body="ü" * 6, max_body=12).body == "ü" * 6
    with pytest.raises(OversizedBlockError):
        sample_block(body="ü" * 6, max_body=11)


def test_default_body_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_BODY == 1024 * 1024
    record = sample_record(body="x" * DEFAULT_MAX_BODY)
    assert len(parse_and_verify(record).body) == DEFAULT_MAX_BODY
    record["body"] += "x"
    with pytest.raises(OversizedBlockError):
        parse_block(record)


def test_parse_block_respects_a_custom_limit() -> None:
    record = sample_record(body="ä" * 600)  # 1200 bytes
    assert parse_block(record, max_body=1200).body == "ä" * 600
    with pytest.raises(OversizedBlockError, match="1200 bytes"):
        parse_block(record, max_body=1199)


def test_unknown_author_is_rejected() -> None:
    block = make_block(STRANGER.signing, STRANGER.device_id, kind="note", body="b", created=1)
    with pytest.raises(UnknownAuthorError):
        verify_block(block, lookup)
    verify_block(block, {STRANGER.device_id: STRANGER.sign_public}.get)


def test_signature_by_another_known_device_is_rejected() -> None:
    block = sample_block()
    digest = bytes.fromhex(block.id)
    forged = OTHER.signing.sign(BLOCK_DOMAIN + digest).signature.hex()
    record = {**block.to_dict(), "sig": forged}
    with pytest.raises(BadSignatureError):
        parse_and_verify(record)


def test_signature_of_another_block_is_rejected() -> None:
    record = {**sample_record(), "sig": sample_block(body="other").sig}
    with pytest.raises(BadSignatureError):
        parse_and_verify(record)


def test_tombstone_signature_cannot_be_replayed_as_block_signature() -> None:
    block = sample_block()
    cross = KEYS.signing.sign(TOMBSTONE_DOMAIN + bytes.fromhex(block.id)).signature.hex()
    with pytest.raises(BadSignatureError):
        parse_and_verify({**block.to_dict(), "sig": cross})


def test_wrong_id_is_an_id_mismatch() -> None:
    record = {**sample_record(), "id": "0" * 64}
    block = parse_block(record)  # structurally fine
    with pytest.raises(IdMismatchError):
        verify_block(block, lookup)


# -- typed parse errors --------------------------------------------------------


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(record: dict[str, Any]) -> None:
        del record[key]

    return mutate


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(record: dict[str, Any]) -> None:
        record[key] = value

    return mutate


def _set_meta(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(record: dict[str, Any]) -> None:
        record["meta"][key] = value

    return mutate


BLOCK_FIELDS = ["v", "kind", "scope", "body", "meta", "author", "created", "refs", "id", "sig"]

MALFORMED_BLOCKS: dict[str, Callable[[dict[str, Any]], None]] = {
    **{f"missing {field}": _without(field) for field in BLOCK_FIELDS},
    "extra field": _set("extra", 1),
    "v is a string": _set("v", "1"),
    "v is a bool": _set("v", True),
    "v is a float": _set("v", 1.0),
    "v is null": _set("v", None),
    "kind not a string": _set("kind", 1),
    "scope not a string": _set("scope", None),
    "body not a string": _set("body", ["x"]),
    "body with lone surrogate": _set("body", "\udc80"),
    "meta not an object": _set("meta", []),
    "author not a string": _set("author", 7),
    "author uppercase": _set("author", KEYS.device_id.upper()),
    "author bad alphabet": _set("author", "abcd-efgh-ijkl-mno1"),
    "author trailing newline": _set("author", KEYS.device_id + "\n"),
    "created a string": _set("created", str(CREATED)),
    "created a float": _set("created", float(CREATED)),
    "created a bool": _set("created", True),
    "created negative": _set("created", -1),
    "created too large": _set("created", 2**53),
    "refs not a list": _set("refs", {}),
    "ref not an object": _set("refs", ["a" * 64]),
    "ref missing id": _set("refs", [{"rel": "part_of"}]),
    "ref extra key": _set("refs", [{"rel": "part_of", "id": "a" * 64, "x": 1}]),
    "ref unknown relation": _set("refs", [{"rel": "cites", "id": "a" * 64}]),
    "ref id uppercase": _set("refs", [{"rel": "part_of", "id": "A" * 64}]),
    "ref id short": _set("refs", [{"rel": "part_of", "id": "a" * 63}]),
    "ref id trailing newline": _set("refs", [{"rel": "part_of", "id": "a" * 64 + "\n"}]),
    "too many refs": _set("refs", [{"rel": "part_of", "id": "a" * 64}] * (MAX_REFS + 1)),
    "id not a string": _set("id", 1),
    "id uppercase": _set("id", "A" * 64),
    "id too short": _set("id", "a" * 63),
    "id trailing newline": _set("id", "a" * 64 + "\n"),
    "sig too short": _set("sig", "0" * 127),
    "sig not hex": _set("sig", "z" * 128),
    "meta extra field": _set_meta("colour", "red"),
    "meta empty title": _set_meta("title", ""),
    "meta title not a string": _set_meta("title", 1),
    "meta title too long": _set_meta("title", "t" * (MAX_TITLE + 1)),
    "meta empty source": _set_meta("source", ""),
    "meta source too long": _set_meta("source", "s" * (MAX_SOURCE + 1)),
    "meta tags empty list": _set_meta("tags", []),
    "meta tags a string": _set_meta("tags", "reise"),
    "meta tags unsorted": _set_meta("tags", ["b", "a"]),
    "meta tags duplicated": _set_meta("tags", ["a", "a"]),
    "meta tag untrimmed": _set_meta("tags", [" a"]),
    "meta tag empty": _set_meta("tags", [""]),
    "meta tag not a string": _set_meta("tags", [1]),
    "meta tag too long": _set_meta("tags", ["x" * (MAX_TAG_LEN + 1)]),
    "meta too many tags": _set_meta("tags", [f"t{i:03d}" for i in range(MAX_TAGS + 1)]),
    "meta lang uppercase": _set_meta("lang", "DE"),
    "meta lang a word": _set_meta("lang", "german"),
    "meta lang trailing newline": _set_meta("lang", "de\n"),
    "meta lang empty": _set_meta("lang", ""),
    "meta seq negative": _set_meta("seq", -1),
    "meta seq a bool": _set_meta("seq", False),
    "meta seq a string": _set_meta("seq", "3"),
}


@pytest.mark.parametrize("mutate", MALFORMED_BLOCKS.values(), ids=MALFORMED_BLOCKS.keys())
def test_malformed_block_records(mutate: Callable[[dict[str, Any]], None]) -> None:
    record = sample_record()
    mutate(record)
    with pytest.raises(MalformedBlockError):
        parse_block(record)


def test_sig_with_trailing_newline_is_malformed_not_accepted() -> None:
    # bytes.fromhex() skips whitespace, so a lax pattern would accept a second
    # spelling of the same valid signature.
    record = sample_record()
    record["sig"] += "\n"
    with pytest.raises(MalformedBlockError):
        parse_and_verify(record)


@pytest.mark.parametrize("record", [[], "block", 1, None, [{"v": 1}]], ids=repr)
def test_non_object_records_are_malformed(record: object) -> None:
    with pytest.raises(MalformedBlockError):
        parse_block(record)
    with pytest.raises(MalformedBlockError):
        parse_tombstone(record)


@pytest.mark.parametrize("version", [0, 2, 99])
def test_unknown_format_version(version: int) -> None:
    with pytest.raises(UnknownFormatError):
        parse_block({**sample_record(), "v": version})
    tomb = make_tombstone(KEYS.signing, KEYS.device_id, erases="a" * 64, created=1)
    with pytest.raises(UnknownFormatError):
        parse_tombstone({**tomb.to_dict(), "v": version})


@pytest.mark.parametrize(
    ("field", "value"), [("kind", "memo"), ("kind", "Fact"), ("kind", ""), ("scope", "public")]
)
def test_unknown_kind_or_scope(field: str, value: str) -> None:
    with pytest.raises(UnknownKindError):
        parse_block({**sample_record(), field: value})


def test_every_kind_and_scope_is_accepted() -> None:
    for kind in KINDS:
        for scope in SCOPES:
            block = sample_block(kind=kind, scope=scope)
            assert parse_and_verify(block.to_dict()) == block


def test_unsigned_records_must_not_carry_id_or_sig() -> None:
    block = sample_block()
    assert parse_block(block.unsigned_dict(), signed=False).body == block.body
    with pytest.raises(MalformedBlockError):
        parse_block(block.to_dict(), signed=False)
    with pytest.raises(MalformedBlockError):
        parse_block(block.unsigned_dict())


@pytest.mark.parametrize(
    "data",
    [
        "",
        "   ",
        '{"v": 1, "kind": "note"',
        "[1, 2]",
        '"just a string"',
        "null",
        b"\xff\xfe{}",
        b'{"body": "\xc3"}',
        "[" * 100_000,
    ],
    ids=repr,
)
def test_loads_record_rejects_non_objects_and_bad_json(data: str | bytes) -> None:
    with pytest.raises(MalformedBlockError):
        loads_record(data)


def test_truncated_record_text_is_malformed() -> None:
    text = json.dumps(sample_record())
    for cut in range(1, len(text), 7):
        with pytest.raises(MalformedBlockError):
            loads_record(text[:cut])
    assert parse_and_verify(loads_record(text)) == sample_block()


def test_nan_and_float_values_in_json_are_malformed() -> None:
    text = json.dumps(sample_record()).replace(f'"created": {CREATED}', '"created": NaN')
    assert "NaN" in text
    with pytest.raises(MalformedBlockError):
        parse_block(loads_record(text))


def test_normalise_tags() -> None:
    assert normalise_tags(None) == ()
    assert normalise_tags("  solo ") == ("solo",)
    assert normalise_tags(("b", "a ", "a", " ", "")) == ("a", "b")
    with pytest.raises(MalformedBlockError):
        normalise_tags(["ok", 3])
    with pytest.raises(MalformedBlockError):
        normalise_tags({"a": 1})


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (MalformedBlockError, "malformed_block", 422),
        (UnknownFormatError, "unknown_format_version", 422),
        (UnknownKindError, "unknown_kind", 422),
        (OversizedBlockError, "block_too_large", 413),
        (IdMismatchError, "id_mismatch", 422),
        (BadSignatureError, "bad_signature", 422),
        (UnknownAuthorError, "unknown_author", 422),
    ],
)
def test_block_errors_have_stable_codes(error: type[BlockError], code: str, status: int) -> None:
    exc = error("boom")
    assert isinstance(exc, BlockError)
    assert isinstance(exc, KianaError)
    assert (exc.code, exc.http_status, exc.message) == (code, status, "boom")


# -- tombstones ----------------------------------------------------------------


def sample_tombstone(**overrides: Any) -> Tombstone:
    fields: dict[str, Any] = {"erases": "b" * 64, "created": CREATED, "reason": "DSGVO Löschung"}
    fields.update(overrides)
    return make_tombstone(KEYS.signing, KEYS.device_id, **fields)


def test_tombstone_round_trip_and_verify() -> None:
    tomb = sample_tombstone()
    record = json.loads(canonical_bytes(tomb.to_dict()))
    parsed = parse_tombstone(record)
    assert parsed == tomb
    verify_tombstone(parsed, lookup)
    digest = hashlib.sha256(canonical_bytes(tomb.unsigned_dict())).digest()
    assert tomb.id == digest.hex()
    KEYS.signing.verify_key.verify(TOMBSTONE_DOMAIN + digest, bytes.fromhex(tomb.sig))


def test_tombstone_reason_is_optional_and_omitted_when_empty() -> None:
    tomb = sample_tombstone(reason="")
    assert "reason" not in tomb.to_dict()
    parsed = parse_tombstone(tomb.to_dict())
    assert parsed.reason == ""
    verify_tombstone(parsed, lookup)


MALFORMED_TOMBSTONES: dict[str, Callable[[dict[str, Any]], None]] = {
    **{f"missing {f}": _without(f) for f in ["v", "erases", "author", "created", "id", "sig"]},
    "extra field": _set("body", "x"),
    "empty reason": _set("reason", ""),
    "reason not a string": _set("reason", 5),
    "reason too long": _set("reason", "r" * (MAX_REASON + 1)),
    "erases not hex": _set("erases", "x" * 64),
    "erases trailing newline": _set("erases", "b" * 64 + "\n"),
    "author malformed": _set("author", "nobody"),
    "created negative": _set("created", -1),
    "v a string": _set("v", "1"),
    "sig too long": _set("sig", "0" * 130),
}


@pytest.mark.parametrize("mutate", MALFORMED_TOMBSTONES.values(), ids=MALFORMED_TOMBSTONES.keys())
def test_malformed_tombstones(mutate: Callable[[dict[str, Any]], None]) -> None:
    record = sample_tombstone().to_dict()
    mutate(record)
    with pytest.raises(MalformedBlockError):
        parse_tombstone(record)


def test_tombstone_verification_errors() -> None:
    tomb = sample_tombstone()
    with pytest.raises(IdMismatchError):
        verify_tombstone(parse_tombstone({**tomb.to_dict(), "erases": "c" * 64}), lookup)
    with pytest.raises(BadSignatureError):
        verify_tombstone(parse_tombstone({**tomb.to_dict(), "sig": "0" * 128}), lookup)
    stranger = make_tombstone(STRANGER.signing, STRANGER.device_id, erases="b" * 64, created=1)
    with pytest.raises(UnknownAuthorError):
        verify_tombstone(stranger, lookup)


def test_block_signature_cannot_be_replayed_as_tombstone_signature() -> None:
    tomb = sample_tombstone()
    cross = KEYS.signing.sign(BLOCK_DOMAIN + bytes.fromhex(tomb.id)).signature.hex()
    with pytest.raises(BadSignatureError):
        verify_tombstone(parse_tombstone({**tomb.to_dict(), "sig": cross}), lookup)


# -- property tests: round trip and tamper detection ----------------------------

hex64 = st.text(HEX, min_size=64, max_size=64)
hex128 = st.text(HEX, min_size=128, max_size=128)
langs = st.from_regex(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}", fullmatch=True)
tag_lists = st.lists(st.text(min_size=1, max_size=12), max_size=5)
ref_lists = st.lists(
    st.builds(Ref, rel=st.sampled_from(sorted(REF_RELATIONS)), id=hex64), max_size=3
)
signers = st.sampled_from([KEYS, OTHER])


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    signer = draw(signers)
    return make_block(
        signer.signing,
        signer.device_id,
        kind=draw(st.sampled_from(sorted(KINDS))),
        scope=draw(st.sampled_from(sorted(SCOPES))),
        body=draw(st.text(max_size=200)),
        created=draw(st.integers(min_value=0, max_value=MAX_INT)),
        title=draw(st.text(max_size=40)),
        tags=draw(tag_lists),
        source=draw(st.text(max_size=40)),
        lang=draw(st.one_of(st.just(""), langs)),
        seq=draw(st.none() | st.integers(min_value=0, max_value=MAX_INT)),
        refs=draw(ref_lists),
    )


@settings(max_examples=100)
@given(blocks())
def test_signed_blocks_round_trip_through_canonical_json(block: Block) -> None:
    data = canonical_bytes(block.to_dict())
    parsed = parse_block(json.loads(data))
    assert parsed == block
    verify_block(parsed, lookup)
    assert canonical_bytes(parsed.to_dict()) == data


HASHED_FIELDS = [
    "kind",
    "scope",
    "body",
    "title",
    "tags",
    "source",
    "lang",
    "seq",
    "author",
    "created",
    "refs",
]


def _different(draw: st.DrawFn, strategy: st.SearchStrategy[Any], old: Any) -> Any:
    return draw(strategy.filter(lambda new: new != old))


def _tamper_meta(draw: st.DrawFn, meta: dict[str, Any], field: str) -> None:
    values: dict[str, st.SearchStrategy[Any]] = {
        "title": st.text(min_size=1, max_size=20),
        "source": st.text(min_size=1, max_size=20),
        "lang": langs,
        "seq": st.integers(min_value=0, max_value=MAX_INT),
        "tags": tag_lists.map(normalise_tags).filter(bool).map(list),
    }
    old = meta.get(field)
    # Either drop a present field or set a new, valid value.
    if old is not None and draw(st.booleans()):
        del meta[field]
    else:
        meta[field] = _different(draw, values[field], old)


@st.composite
def tampered_records(draw: st.DrawFn) -> tuple[Block, str, dict[str, Any]]:
    """A valid signed block, the field changed, and the record with one valid-looking change."""
    block = draw(blocks())
    field = draw(st.sampled_from([*HASHED_FIELDS, "id", "sig"]))
    record = block.to_dict()
    if field in ("title", "tags", "source", "lang", "seq"):
        _tamper_meta(draw, record["meta"], field)
    elif field == "kind":
        record["kind"] = _different(draw, st.sampled_from(sorted(KINDS)), block.kind)
    elif field == "scope":
        record["scope"] = _different(draw, st.sampled_from(sorted(SCOPES)), block.scope)
    elif field == "body":
        record["body"] = _different(draw, st.text(max_size=200), block.body)
    elif field == "author":
        choices = [k.device_id for k in (KEYS, OTHER, STRANGER)]
        record["author"] = _different(draw, st.sampled_from(choices), block.author)
    elif field == "created":
        new = st.integers(min_value=0, max_value=MAX_INT)
        record["created"] = _different(draw, new, block.created)
    elif field == "refs":
        new_refs = ref_lists.map(lambda refs: [r.to_dict() for r in refs])
        record["refs"] = _different(draw, new_refs, record["refs"])
    elif field == "id":
        record["id"] = _different(draw, hex64, block.id)
    else:
        record["sig"] = _different(draw, hex128, block.sig)
    return block, field, record


@settings(max_examples=250)
@given(tampered_records())
def test_any_change_to_a_signed_block_is_detected(
    case: tuple[Block, str, dict[str, Any]],
) -> None:
    block, field, record = case
    assert record != block.to_dict()
    verify_block(block, lookup)  # the original is fine

    if field == "sig":
        with pytest.raises(BadSignatureError):
            parse_and_verify(record)
        return
    # Changing the content without fixing the id: the id no longer matches.
    with pytest.raises(IdMismatchError):
        parse_and_verify(record)
    if field == "id":
        return
    # An attacker who also recomputes the id still lacks a valid signature.
    unsigned = {k: v for k, v in record.items() if k not in ("id", "sig")}
    rehashed = {**record, "id": record_id(unsigned)}
    expected: type[BlockError] = BadSignatureError
    if record["author"] not in KNOWN:
        expected = UnknownAuthorError
    with pytest.raises(expected):
        parse_and_verify(rehashed)


@st.composite
def tampered_tombstones(draw: st.DrawFn) -> tuple[Tombstone, dict[str, Any]]:
    tomb = make_tombstone(
        KEYS.signing,
        KEYS.device_id,
        erases=draw(hex64),
        created=draw(st.integers(min_value=0, max_value=MAX_INT)),
        reason=draw(st.text(max_size=30)),
    )
    record = tomb.to_dict()
    field = draw(st.sampled_from(["erases", "author", "created", "reason"]))
    if field == "erases":
        record["erases"] = _different(draw, hex64, tomb.erases)
    elif field == "author":
        record["author"] = OTHER.device_id
    elif field == "created":
        record["created"] = _different(draw, st.integers(0, MAX_INT), tomb.created)
    elif tomb.reason and draw(st.booleans()):
        del record["reason"]
    else:
        record["reason"] = _different(draw, st.text(min_size=1, max_size=30), tomb.reason)
    return tomb, record


@settings(max_examples=100)
@given(tampered_tombstones())
def test_any_change_to_a_tombstone_is_detected(case: tuple[Tombstone, dict[str, Any]]) -> None:
    tomb, record = case
    assert parse_tombstone(json.loads(canonical_bytes(tomb.to_dict()))) == tomb
    verify_tombstone(tomb, lookup)
    with pytest.raises(IdMismatchError):
        verify_tombstone(parse_tombstone(record), lookup)
    unsigned = {k: v for k, v in record.items() if k not in ("id", "sig")}
    with pytest.raises(BadSignatureError):
        verify_tombstone(parse_tombstone({**record, "id": record_id(unsigned)}), lookup)
