"""Fork choice and whole-chain verification.

The head is the chain with the most total difficulty (the sum of its blocks' 2s and 1s);
between equally heavy heads the one with the lower hash wins, so every device that holds
the same blocks picks the same head whatever order they arrived in.

``verify_chain`` checks a chain from genesis on, block by block, and reports the first
bad link (what ``kiana ledger verify`` prints).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kiana.identity.mind import Genesis
from kiana.ledger.chain import LedgerBlock, genesis_block, parse_block, verify_block
from kiana.ledger.errors import BadLinkError, LedgerError
from kiana.ledger.state import DEFAULT_PARAMS, Params, genesis_state


def heavier(total: int, block_hash: str, than_total: int, than_hash: str) -> bool:
    """Whether a head (``total``, ``block_hash``) beats another one."""
    return total > than_total or (total == than_total and block_hash < than_hash)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    height: int  # height of the last good block (0: only genesis, -1: not even that)
    first_bad_height: int | None = None  # where the first bad link is
    code: str = ""  # the error's code
    reason: str = ""


def verify_chain(
    blocks: Iterable[LedgerBlock | str | bytes],
    genesis: Genesis,
    params: Params = DEFAULT_PARAMS,
) -> VerifyResult:
    """Verify ``blocks`` (genesis first, then heights 1, 2, ...) from the mind's genesis.

    Blocks may be given parsed or as JSON text. Stops at the first bad link.
    """
    expected_genesis = genesis_block(genesis)
    state = genesis_state(genesis)
    seen: set[str] = set()
    prev: LedgerBlock | None = None
    for position, item in enumerate(blocks):
        try:
            block = parse_block(item) if isinstance(item, str | bytes) else item
            if prev is None:
                if block != expected_genesis or block.hash != expected_genesis.hash:
                    raise BadLinkError("the chain does not start at this mind's genesis block")
            else:
                state = verify_block(block, prev, state, params=params, committed=seen.__contains__)
                seen.update(r.id for r in block.records)
        except LedgerError as exc:
            return VerifyResult(
                ok=False,
                height=position - 1,
                first_bad_height=position,
                code=exc.code,
                reason=exc.message,
            )
        prev = block
    if prev is None:
        return VerifyResult(False, -1, 0, BadLinkError.code, "the chain is empty")
    return VerifyResult(ok=True, height=prev.height)


__all__ = ["VerifyResult", "heavier", "verify_chain"]
