"""Device identity (keys, fingerprints) and the mind's genesis record."""

from kiana.identity.keys import DeviceKeys, device_id_for
from kiana.identity.mind import Genesis, make_genesis, parse_genesis

__all__ = ["DeviceKeys", "Genesis", "device_id_for", "make_genesis", "parse_genesis"]
