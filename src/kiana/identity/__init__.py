"""Device identity (keys, fingerprints) and the mind's genesis record."""

from kiana.identity.keys import DeviceKeys, device_id_for
from kiana.identity.membership import (
    MembershipRecord,
    apply_membership,
    parse_membership,
    record_json,
    replay_membership,
    sign_membership,
    verify_membership,
)
from kiana.identity.mind import Genesis, make_genesis, parse_genesis

__all__ = [
    "DeviceKeys",
    "Genesis",
    "MembershipRecord",
    "apply_membership",
    "device_id_for",
    "make_genesis",
    "parse_genesis",
    "parse_membership",
    "record_json",
    "replay_membership",
    "sign_membership",
    "verify_membership",
]
