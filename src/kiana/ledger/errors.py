"""Errors of the mind's ledger, one branch of ``kiana.errors``' tree::

KianaError
└── LedgerError                 a ledger record or block failed validation
    ├── MalformedLedgerError    not valid JSON / wrong types / missing or extra fields
    ├── UnsupportedRecordError  a record kind reserved for later ("vote", "rotate")
    ├── BadLedgerSignatureError the block's Ed25519 signature does not verify
    ├── NotAuthorityError       the signer is not an authority at the block's parent
    ├── BadLinkError            wrong parent hash or height, or an unknown genesis
    ├── BadTimeError            the block is not far enough after its parent, or from the future
    ├── BadMerkleRootError      the Merkle root does not match the records
    ├── BadDifficultyError      difficulty is not 2 in turn / 1 out of turn
    ├── SignerLimitError        the signer sealed too recently (Clique's signer limit)
    ├── BadCheckpointError      a checkpoint block's authority list is wrong (or missing)
    ├── InvalidRecordError      a record does not hold at its height (membership record
    │                           not signed by an authority, record already on the chain)
    └── LedgerVerifyError       the stored chain fails verification (kiana ledger verify)
"""

from __future__ import annotations

from kiana.errors import KianaError


class LedgerError(KianaError):
    code = "invalid_ledger_block"
    http_status = 422


class MalformedLedgerError(LedgerError):
    code = "malformed_ledger_block"


class UnsupportedRecordError(LedgerError):
    code = "unsupported_ledger_record"


class BadLedgerSignatureError(LedgerError):
    code = "bad_ledger_signature"


class NotAuthorityError(LedgerError):
    code = "not_an_authority"


class BadLinkError(LedgerError):
    code = "bad_ledger_link"


class BadTimeError(LedgerError):
    code = "bad_ledger_time"


class BadMerkleRootError(LedgerError):
    code = "bad_merkle_root"


class BadDifficultyError(LedgerError):
    code = "bad_difficulty"


class SignerLimitError(LedgerError):
    code = "signer_limit"


class BadCheckpointError(LedgerError):
    code = "bad_checkpoint"


class InvalidRecordError(LedgerError):
    code = "invalid_ledger_record"


__all__ = [
    "BadCheckpointError",
    "BadDifficultyError",
    "BadLedgerSignatureError",
    "BadLinkError",
    "BadMerkleRootError",
    "BadTimeError",
    "InvalidRecordError",
    "LedgerError",
    "MalformedLedgerError",
    "NotAuthorityError",
    "SignerLimitError",
    "UnsupportedRecordError",
]


class LedgerVerifyError(LedgerError):
    code = "ledger_broken"
    http_status = 409
