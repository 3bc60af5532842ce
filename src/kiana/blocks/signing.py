"""Create and verify signed blocks and tombstones.

The signature is Ed25519 over ``DOMAIN || sha256(canonical bytes)``, where the
domain string separates blocks from tombstones and other record types.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import lru_cache
from typing import Any, TypeAlias, TypeVar

from nacl.exceptions import BadSignatureError as NaclBadSignature
from nacl.signing import SigningKey, VerifyKey

from kiana.blocks.canonical import canonical_bytes
from kiana.blocks.codec import DEFAULT_MAX_BODY, normalise_tags, parse_block
from kiana.blocks.model import BLOCK_DOMAIN, TOMBSTONE_DOMAIN, Block, Meta, Ref, Tombstone
from kiana.errors import (
    BadSignatureError,
    IdMismatchError,
    MalformedBlockError,
    UnknownAuthorError,
)

R = TypeVar("R", Block, Tombstone)

KeyLookup: TypeAlias = Callable[[str], bytes | None]
"""Maps a device id to its raw 32-byte Ed25519 public key, or ``None`` if unknown."""


@lru_cache(maxsize=1024)
def _verify_key(raw: bytes) -> VerifyKey:
    return VerifyKey(raw)


def _digest(unsigned: dict[str, Any]) -> bytes:
    try:
        data = canonical_bytes(unsigned)
    except ValueError as exc:
        raise MalformedBlockError(f"record cannot be encoded canonically: {exc}") from exc
    return hashlib.sha256(data).digest()


def _signed(draft: R, unsigned: dict[str, Any], signing_key: SigningKey, domain: bytes) -> R:
    """``draft`` with its id (the digest of ``unsigned``) and signature under ``domain``."""
    digest = _digest(unsigned)
    sig = signing_key.sign(domain + digest).signature
    return replace(draft, id=digest.hex(), sig=sig.hex())


def _checked_message(unsigned: dict[str, Any], rid: str, what: str, domain: bytes) -> bytes:
    """``domain || digest`` of ``unsigned``, once ``rid`` is checked to be that digest."""
    digest = _digest(unsigned)
    if not hmac.compare_digest(digest.hex(), rid):
        raise IdMismatchError(f"{what} id {rid[:12]}… does not match its content")
    return domain + digest


def make_block(
    signing_key: SigningKey,
    author: str,
    *,
    kind: str,
    body: str,
    created: int,
    scope: str = "shared",
    title: str = "",
    tags: Iterable[str] = (),
    source: str = "",
    lang: str = "",
    seq: int | None = None,
    refs: Iterable[Ref] = (),
    max_body: int = DEFAULT_MAX_BODY,
) -> Block:
    """Build, validate and sign a new block."""
    meta = Meta(
        title=title.strip(),
        tags=normalise_tags(list(tags)),
        source=source,
        lang=lang,
        seq=seq,
    )
    draft = Block(
        kind=kind,
        scope=scope,
        body=body,
        meta=meta,
        author=author,
        created=created,
        refs=tuple(refs),
    )
    unsigned = draft.unsigned_dict()
    # Validate exactly what we are about to sign, with the same rules a receiver uses.
    parse_block(unsigned, max_body=max_body, signed=False)
    return _signed(draft, unsigned, signing_key, BLOCK_DOMAIN)


def verify_block(block: Block, lookup: KeyLookup) -> None:
    """Raise ``IdMismatchError``, ``UnknownAuthorError`` or ``BadSignatureError``."""
    check_signature(block_message(block), block.sig, block.author, lookup, "block", block.id)


def block_message(block: Block) -> bytes:
    """What a block's signature covers, once its id is checked (else ``IdMismatchError``).

    ``verify_block`` in two steps, for callers that check signatures on another thread.
    """
    return _checked_message(block.unsigned_dict(), block.id, "block", BLOCK_DOMAIN)


def make_tombstone(
    signing_key: SigningKey, author: str, *, erases: str, created: int, reason: str = ""
) -> Tombstone:
    draft = Tombstone(erases=erases, author=author, created=created, reason=reason)
    return _signed(draft, draft.unsigned_dict(), signing_key, TOMBSTONE_DOMAIN)


def verify_tombstone(tomb: Tombstone, lookup: KeyLookup) -> None:
    check_signature(tombstone_message(tomb), tomb.sig, tomb.author, lookup, "tombstone", tomb.id)


def tombstone_message(tomb: Tombstone) -> bytes:
    """What a tombstone's signature covers, once its id is checked (else ``IdMismatchError``)."""
    return _checked_message(tomb.unsigned_dict(), tomb.id, "tombstone", TOMBSTONE_DOMAIN)


def check_signature(
    message: bytes, sig_hex: str, author: str, lookup: KeyLookup, what: str, rid: str
) -> None:
    """Raise ``UnknownAuthorError`` or ``BadSignatureError`` unless ``author`` signed ``message``.

    PyNaCl releases the GIL inside libsodium: this may run on a worker thread.
    """
    raw = lookup(author)
    if raw is None:
        raise UnknownAuthorError(f"{what} {rid[:12]}… is signed by unknown device {author}")
    try:
        _verify_key(raw).verify(message, bytes.fromhex(sig_hex))
    except (NaclBadSignature, ValueError) as exc:
        raise BadSignatureError(f"{what} {rid[:12]}… has an invalid signature") from exc
