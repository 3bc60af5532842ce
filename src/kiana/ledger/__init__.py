"""The mind's proof-of-authority ledger (Clique-style), sans-I/O.

``records`` (what is agreed on), ``state`` (authority set and sealing rules),
``chain`` (sealed blocks), ``forkchoice`` (heaviest chain, ``verify_chain``),
``ledger`` (the core: tree, head, pending pool), ``store`` (persistence).
"""

from kiana.ledger.chain import (
    LedgerBlock,
    block_json,
    genesis_block,
    parse_block,
    seal,
    verify_block,
)
from kiana.ledger.errors import LedgerError
from kiana.ledger.forkchoice import VerifyResult, verify_chain
from kiana.ledger.ledger import Accepted, Ledger, LedgerEvent, Orphan, Rejected, Reorg
from kiana.ledger.records import (
    Record,
    commit_record,
    erase_record,
    member_record,
    merkle_root,
    parse_record,
    private_commit_token,
    private_erase_token,
    private_record,
)
from kiana.ledger.state import DEFAULT_PARAMS, ChainState, Params, genesis_state
from kiana.ledger.store import LedgerStore, MemoryLedgerStore, SqlLedgerStore

__all__ = [
    "DEFAULT_PARAMS",
    "Accepted",
    "ChainState",
    "Ledger",
    "LedgerBlock",
    "LedgerError",
    "LedgerEvent",
    "LedgerStore",
    "MemoryLedgerStore",
    "Orphan",
    "Params",
    "Record",
    "Rejected",
    "Reorg",
    "SqlLedgerStore",
    "VerifyResult",
    "block_json",
    "commit_record",
    "erase_record",
    "genesis_block",
    "genesis_state",
    "member_record",
    "merkle_root",
    "parse_block",
    "parse_record",
    "private_commit_token",
    "private_erase_token",
    "private_record",
    "seal",
    "verify_block",
    "verify_chain",
]
