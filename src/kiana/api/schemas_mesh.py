"""Request and response models of the mesh routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class MeshDeviceOut(BaseModel):
    device_id: str
    name: str
    role: str
    person: str
    added: int
    sign_key: str = Field(description="Ed25519 public key, hex.")
    box_key: str = Field(description="X25519 public key, hex.")
    revoked: int | None = Field(None, description="When the device was revoked (ms), or null.")
    last_seen: int | None = Field(None, description="Last authenticated contact (ms), or null.")
    state: str | None = Field(None, description="connecting, up, suspect or down; null if unknown.")
    link: str | None = Field(None, description="direct or relayed, while a link is up.")
    rtt_ms: float | None = None


class MeshDevicesOut(BaseModel):
    this_device: str
    devices: list[MeshDeviceOut]


class RevokeOut(BaseModel):
    device_id: str
    revoked: int


class PeerOut(BaseModel):
    device: str
    name: str
    state: str
    link: str | None
    remote: str | None
    rtt_ms: float | None
    since: int | None
    bytes_in: int
    bytes_out: int
    addresses: list[str]
    last_error: str | None


class PeersOut(BaseModel):
    port: int
    peers: list[PeerOut]


class AddressIn(BaseModel):
    address: str = Field(min_length=1, max_length=300, examples=["192.168.1.20:7475"])


class AddressOut(BaseModel):
    address: str


class InviteIn(BaseModel):
    ttl_s: int | None = Field(None, ge=10, le=3600, description="Lifetime of the code.")
    role: Literal["member", "authority"] = "member"


class InviteOut(BaseModel):
    code: str = Field(examples=["7-crane-orbit"])
    nameplate: int
    expires: int
    port: int


class PairingStateOut(BaseModel):
    nameplate: int
    state: Literal["waiting", "joined", "failed", "expired"]
    device: str | None = None
    name: str | None = None
    error: str | None = None


class MessageIn(BaseModel):
    to: str = Field(pattern=r"^[a-z2-7]{4}(-[a-z2-7]{4}){3}$")
    channel: str = Field(min_length=5, max_length=64, pattern=r"^[a-z0-9._-]+$")
    text: str = Field(max_length=1024 * 1024)
    ttl_s: int | None = Field(None, ge=1, le=30 * 24 * 3600)
    ordered: bool = False


class MessageOut(BaseModel):
    id: str


class InboxMessage(BaseModel):
    id: str
    sender: str
    channel: str
    seq: int
    created: int
    text: str
    body_b64: str


class InboxOut(BaseModel):
    messages: list[InboxMessage]


class PingOut(BaseModel):
    device_id: str
    rtt_ms: float


class SyncPeerOut(BaseModel):
    device: str
    name: str
    up: bool
    in_sync: bool
    behind: int = Field(description="Records the peer has that this device still waits for.")
    comparing: bool = Field(
        False,
        description="This device is still comparing its set with the peer's: `behind` counts"
        " only what the rounds so far found missing (a lower bound).",
    )
    ahead_at_last_check: int
    last_exchange: int | None
    last_reconciled: int | None
    received: int
    sent: int
    bytes_in: int
    bytes_out: int
    rejected: int = Field(description="Invalid records this peer sent (its standing).")
    state_rejected: int = Field(
        0,
        description="Shared-state ops and messages from this peer that were refused (forged,"
        " bad signature, unknown device, garbage; proofs of another device's equivocation"
        " it passed on count here too).",
    )
    view: str


class RejectedOut(BaseModel):
    blocks: int = Field(description="Invalid blocks or tombstones peers sent (all peers).")
    state: int = Field(description="Invalid shared-state messages.")
    ledger: int = Field(description="Ledger blocks or records refused (forged seal, ...).")
    other: int


class SyncStatusOut(BaseModel):
    items: int = Field(description="Blocks and tombstones this device holds.")
    peers: list[SyncPeerOut]
    rejected: RejectedOut


class LedgerRecordOut(BaseModel):
    id: str
    kind: str
    block: str | None = None
    tombstone: str | None = None
    device: str | None = None
    action: str | None = None
    role: str | None = None


class LedgerBlockOut(BaseModel):
    height: int
    hash: str
    parent: str
    time: int
    signer: str
    difficulty: int
    in_turn: bool
    records: list[LedgerRecordOut]


class LedgerOut(BaseModel):
    blocks: list[LedgerBlockOut]


class LedgerFindingOut(BaseModel):
    code: str = Field(
        description="Warnings: commit_absent, erase_absent, commit_before_member;"
        " errors: commit_by_revoked, private_id_in_ledger."
    )
    height: int = Field(description="The ledger block that holds the record.")
    record: str = Field(description="The ledger record's id.")
    message: str = Field(description="What was found, in English, with the block id's prefix.")


class LedgerPrivateOut(BaseModel):
    resolved: int = Field(description="Private records that match this device's blocks.")
    not_checkable: int = Field(description="Private records this device cannot check.")


class LedgerCommitsOut(BaseModel):
    checked: int = Field(description="Commit and erase records checked on the verified chain.")
    error_count: int
    warning_count: int
    errors: list[LedgerFindingOut] = Field(description="The first errors, lowest height first.")
    warnings: list[LedgerFindingOut] = Field(description="The first warnings, lowest first.")
    private: LedgerPrivateOut


class LedgerVerifyOut(BaseModel):
    ok: bool = Field(description="The chain verifies and its commit check has no errors.")
    chain_ok: bool = Field(description="Every link verifies from the genesis to the head.")
    height: int = Field(description="Height of the last good block (0: only the genesis).")
    first_bad_height: int | None = None
    code: str | None = None
    reason: str | None = None
    commits: LedgerCommitsOut = Field(
        description="The verified chain's commit and erase records checked against this"
        " device's blocks: counts, and at most 50 findings of each level."
    )


class PinsOut(BaseModel):
    pins: list[str]


class LedgerHeadOut(BaseModel):
    height: int
    head: str
    pending: int = Field(description="Records waiting for an authority to seal them.")
    authorities: list[str]


class LoginIn(BaseModel):
    """Exactly one of ``token`` (the API token) or ``once`` (a one-time login link's nonce)."""

    token: str | None = Field(None, min_length=1, max_length=512)
    once: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")

    @model_validator(mode="after")
    def _one_of(self) -> LoginIn:
        if (self.token is None) == (self.once is None):
            raise ValueError("send either token or once")
        return self


class LinkOut(BaseModel):
    path: str = Field(description="Open it on this node's address: /login#once=<nonce>.")
    once: str = Field(description="The nonce: single use, 256 random bits.")
    expires_in_s: float


class LoginOut(BaseModel):
    csrf: str


class MeOut(BaseModel):
    authenticated: bool


class FileAddedOut(BaseModel):
    file: str
    chunks: int = Field(description="New blocks stored (one per chunk).")
    skipped: int = Field(description="Chunks already stored (an unchanged file).")
    errors: list[str]
