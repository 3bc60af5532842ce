"""Replicas for CRDT tests: a real Ed25519 key per replica name, one shared directory."""

from __future__ import annotations

import hashlib
from functools import cache

from nacl.signing import SigningKey

from kiana.sync.crdt import Op, OpStore, ReplicaKey, SharedState, sign_op

SIG = bytes(range(64))  # a well-formed signature that verifies for nothing


@cache
def key_for(replica: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"kiana-test-replica\x00" + replica.encode()).digest())


def directory(replica: str) -> ReplicaKey | None:
    """Every replica name is a member, with its own key (tests of other rules use theirs)."""
    return ReplicaKey(bytes(key_for(replica).verify_key))


def mk(replica: str, *, store: OpStore | None = None) -> SharedState:
    return SharedState(replica, signer=key_for(replica), directory=directory, store=store)


def signed(op: Op) -> Op:
    """``op`` signed by its replica's key."""
    return sign_op(key_for(op.replica), op)
