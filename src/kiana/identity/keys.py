"""Per-device keys: Ed25519 for signing, X25519 for sealed messages.

Keys are stored as JSON in a file created with mode 0600 inside a 0700
directory. The device id is a short fingerprint of the signing key that a
person can read aloud: 16 base32 characters in four groups.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from kiana.errors import HomeError

_FINGERPRINT_DOMAIN = b"kiana:device:v1\x00"


def device_id_for(sign_public: bytes) -> str:
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN + sign_public).digest()[:10]
    text = base64.b32encode(digest).decode("ascii").lower()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    signing: SigningKey
    box: PrivateKey

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(signing=SigningKey.generate(), box=PrivateKey.generate())

    @property
    def sign_public(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def box_public(self) -> bytes:
        return bytes(self.box.public_key)

    @property
    def device_id(self) -> str:
        return device_id_for(self.sign_public)

    def save(self, path: Path) -> None:
        """Write the keys with 0600 permissions; never overwrite an existing file."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        data = json.dumps(
            {
                "device": self.device_id,
                "sign_seed": bytes(self.signing).hex(),
                "box_secret": bytes(self.box).hex(),
            }
        ).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise HomeError(f"device keys already exist at {path}; refusing to overwrite") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, path: Path) -> DeviceKeys:
        try:
            raw = json.loads(path.read_bytes())
            keys = cls(
                signing=SigningKey(bytes.fromhex(raw["sign_seed"])),
                box=PrivateKey(bytes.fromhex(raw["box_secret"])),
            )
        except FileNotFoundError as exc:
            raise HomeError(f"no device keys at {path}; run 'kiana init' first") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HomeError(f"device keys at {path} are unreadable or corrupt") from exc
        if raw.get("device") != keys.device_id:
            raise HomeError(f"device keys at {path} do not match their recorded device id")
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise HomeError(
                f"device keys at {path} are readable by others (mode {mode:o}); run: chmod 600 {path}"
            )
        return keys
