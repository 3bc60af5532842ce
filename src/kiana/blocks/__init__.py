"""Knowledge blocks: the immutable, content-addressed, signed unit of memory.

See ``docs/block-format.md`` for the wire format. This package has no I/O.
"""

from kiana.blocks.codec import parse_block, parse_tombstone
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
from kiana.blocks.signing import (
    KeyLookup,
    make_block,
    make_tombstone,
    verify_block,
    verify_tombstone,
)

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "REF_RELATIONS",
    "SCOPES",
    "Block",
    "KeyLookup",
    "Meta",
    "Ref",
    "Tombstone",
    "make_block",
    "make_tombstone",
    "parse_block",
    "parse_tombstone",
    "verify_block",
    "verify_tombstone",
]
