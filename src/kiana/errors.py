"""One exception tree for KI_ana.

::

    KianaError
    ├── ConfigError                 bad or unreadable configuration
    ├── HomeError                   data dir missing, already initialised, unreadable keys
    ├── BlockError                  a knowledge block or tombstone failed validation
    │   ├── MalformedBlockError     not valid JSON / wrong types / missing or extra fields
    │   ├── UnknownFormatError      format version this node does not understand
    │   ├── UnknownKindError        kind or scope not in the allowed set
    │   ├── OversizedBlockError     body larger than the configured limit
    │   ├── IdMismatchError         id is not the hash of the canonical bytes
    │   ├── BadSignatureError       Ed25519 signature does not verify
    │   └── UnknownAuthorError      author device is not a known member of the mind
    ├── StoreError                  storage failures
    │   ├── NotFoundError           no block with that id
    │   ├── ErasedError             the block was erased (only a tombstone remains)
    │   ├── ConflictError           a write contradicts what is stored
    │   ├── MigrationError          schema migration failed or database is newer than code
    │   └── DatabaseUnavailableError driver missing or server unreachable
    ├── InputError                  a user-supplied file or argument cannot be used
    ├── EmbeddingModelError         the embedding model or runtime cannot be used
    ├── VectorIndexError            a vector index backend cannot be used
    ├── LLMError                    a chat model or backend failed (bad answer, crash)
        ├── ModelUnavailableError   unknown model, package not installed, not on the server
        ├── ModelCorruptError       a model file fails its sha256 check or is not GGUF
        ├── ContextOverflowError    the prompt does not fit the model's context window
        ├── BackendUnavailableError the Ollama / OpenAI-compatible server cannot be reached
        └── BackendTimeoutError     the backend did not answer in time
    ├── LedgerError                 the mind's ledger refused a block or record
    │   └── (MalformedLedgerError, BadLedgerSignatureError, NotAuthorityError, BadLinkError,
    │        BadTimeError, BadMerkleRootError, BadDifficultyError, SignerLimitError,
    │        BadCheckpointError, InvalidRecordError, UnsupportedRecordError,
    │        LedgerVerifyError: defined in kiana/ledger/errors.py)
    └── MeshError                   peer-to-peer networking failed
        ├── PairingError            pairing could not complete
        │   ├── WrongCodeError      the one-time code does not match (the code is now burnt)
        │   ├── CodeExpiredError    no such code, already used, or older than its lifetime
        │   └── RateLimitedError    too many pairing attempts; wait and retry
        ├── HandshakeError          a peer failed authentication (bad keys, replay, garbage)
        │   ├── NotMemberError      the peer is not a device of this mind
        │   └── RevokedDeviceError  the peer's device was revoked
        ├── FrameError              a frame was truncated, oversized or failed decryption
        ├── MessageError            an end-to-end message is too large, expired or tampered
        ├── PeerUnreachableError    no link to the peer could be opened in time
        └── RelayError              TURN/STUN refused (wrong credentials) or unreachable

Every error has a stable machine-readable ``code`` that the HTTP API returns
and the CLI prints; messages never contain user content beyond ids.
"""

from __future__ import annotations


class KianaError(Exception):
    """Root of every error KI_ana raises on purpose."""

    code = "kiana_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(KianaError):
    code = "config_error"
    http_status = 500


class HomeError(KianaError):
    code = "home_error"
    http_status = 500


class InputError(KianaError):
    code = "invalid_input"
    http_status = 400


class BlockError(KianaError):
    code = "invalid_block"
    http_status = 422


class MalformedBlockError(BlockError):
    code = "malformed_block"


class UnknownFormatError(BlockError):
    code = "unknown_format_version"


class UnknownKindError(BlockError):
    code = "unknown_kind"


class OversizedBlockError(BlockError):
    code = "block_too_large"
    http_status = 413


class IdMismatchError(BlockError):
    code = "id_mismatch"


class BadSignatureError(BlockError):
    code = "bad_signature"


class UnknownAuthorError(BlockError):
    code = "unknown_author"


class StoreError(KianaError):
    code = "store_error"
    http_status = 500


class NotFoundError(StoreError):
    code = "not_found"
    http_status = 404


class ErasedError(StoreError):
    code = "erased"
    http_status = 410


class ConflictError(StoreError):
    code = "conflict"
    http_status = 409


class MigrationError(StoreError):
    code = "migration_error"


class DatabaseUnavailableError(StoreError):
    code = "database_unavailable"
    http_status = 503


class LLMError(KianaError):
    code = "llm_error"
    http_status = 502


class ModelUnavailableError(LLMError):
    code = "model_unavailable"
    http_status = 503


class ModelCorruptError(LLMError):
    code = "model_corrupt"
    http_status = 500


class ContextOverflowError(LLMError):
    code = "context_overflow"
    http_status = 413


class BackendUnavailableError(LLMError):
    code = "backend_unavailable"
    http_status = 503


class BackendTimeoutError(LLMError):
    code = "backend_timeout"
    http_status = 504


class EmbeddingModelError(KianaError):
    """An embedding model or runtime cannot be used (not installed, corrupt, failed to load)."""

    code = "model_unavailable"
    http_status = 503


class VectorIndexError(KianaError):
    """A vector index backend cannot be used (not installed, unreachable, locked)."""

    code = "vector_index_unavailable"
    http_status = 503


class MeshError(KianaError):
    code = "mesh_error"
    http_status = 502


class PairingError(MeshError):
    code = "pairing_failed"
    http_status = 400


class WrongCodeError(PairingError):
    code = "wrong_pairing_code"
    http_status = 403


class CodeExpiredError(PairingError):
    code = "pairing_code_expired"
    http_status = 410


class RateLimitedError(PairingError):
    code = "rate_limited"
    http_status = 429


class HandshakeError(MeshError):
    code = "handshake_failed"
    http_status = 403


class NotMemberError(HandshakeError):
    code = "not_a_member"


class RevokedDeviceError(HandshakeError):
    code = "device_revoked"


class FrameError(MeshError):
    code = "bad_frame"
    http_status = 400


class MessageError(MeshError):
    code = "bad_message"
    http_status = 400


class PeerUnreachableError(MeshError):
    code = "peer_unreachable"
    http_status = 504


class RelayError(MeshError):
    code = "relay_failed"
    http_status = 502
