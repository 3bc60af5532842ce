"""The data directory (``~/.kiana`` or ``$KIANA_HOME``): layout and initialisation.

::

    config.toml        settings (see docs/configuration.md)
    keys/device.json   this device's Ed25519 + X25519 keys (0600, in a 0700 dir)
    mind.json          the mind's signed genesis record
    api-token          bearer token for the HTTP API (0600)
    kiana.db           SQLite database (default storage)
    backups/           automatic backups taken before schema migrations
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from kiana.config import Settings, write_default_config
from kiana.errors import HomeError
from kiana.identity import DeviceKeys, Genesis, make_genesis, parse_genesis
from kiana.identity.mind import new_person_id


@dataclass(frozen=True, slots=True)
class HomeLayout:
    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys" / "device.json"

    @property
    def genesis(self) -> Path:
        return self.root / "mind.json"

    @property
    def token(self) -> Path:
        return self.root / "api-token"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def is_initialised(self) -> bool:
        return self.genesis.exists() or self.keys.exists()


def initialise_home(
    settings: Settings, *, mind_name: str, device_name: str, now: int
) -> tuple[DeviceKeys, Genesis]:
    """Create keys, genesis, token and config. Refuses an already initialised home."""
    layout = HomeLayout(settings.home)
    if layout.is_initialised():
        raise HomeError(
            f"{settings.home} already holds a KI_ana mind; refusing to overwrite it. "
            "Use another KIANA_HOME (or --home) for a second mind."
        )
    try:
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(f"cannot create {settings.home}: {exc.strerror}") from exc
    keys = DeviceKeys.generate()
    genesis = make_genesis(
        keys,
        name=mind_name,
        device_name=device_name or socket.gethostname() or "device",
        created=now,
        person=new_person_id(),
    )
    keys.save(layout.keys)
    _write_private(layout.genesis, genesis_json(genesis).encode(), mode=0o644)
    _write_private(layout.token, secrets.token_urlsafe(32).encode(), mode=0o600)
    if not layout.config.exists():
        write_default_config(layout.config)
    return keys, genesis


def initialise_joined_home(settings: Settings, keys: DeviceKeys, genesis: Genesis) -> None:
    """Write keys, an existing mind's genesis, token and config for a device that joined
    by pairing. Refuses an already initialised home."""
    layout = HomeLayout(settings.home)
    if layout.is_initialised():
        raise HomeError(
            f"{settings.home} already holds a KI_ana mind; refusing to overwrite it. "
            "Use another KIANA_HOME (or --home) to join another mind."
        )
    try:
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(f"cannot create {settings.home}: {exc.strerror}") from exc
    keys.save(layout.keys)
    _write_private(layout.genesis, genesis_json(genesis).encode(), mode=0o644)
    _write_private(layout.token, secrets.token_urlsafe(32).encode(), mode=0o600)
    if not layout.config.exists():
        write_default_config(layout.config)


def genesis_json(genesis: Genesis) -> str:
    return json.dumps(genesis.to_dict(), sort_keys=True, indent=2) + "\n"


def load_identity(settings: Settings) -> tuple[DeviceKeys, Genesis]:
    layout = HomeLayout(settings.home)
    if not layout.genesis.exists():
        raise HomeError(f"no KI_ana mind in {settings.home}; run 'kiana init' first")
    keys = DeviceKeys.load(layout.keys)
    try:
        genesis = parse_genesis(layout.genesis.read_bytes())
    except OSError as exc:
        raise HomeError(f"cannot read {layout.genesis}: {exc.strerror}") from exc
    return keys, genesis


def read_token(settings: Settings) -> str:
    path = HomeLayout(settings.home).token
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise HomeError(f"no API token at {path}; run 'kiana init' first") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HomeError(f"cannot read the API token at {path}") from exc
    if len(token) < 32:
        raise HomeError(f"the API token at {path} is too short to be safe")
    return token


def _write_private(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
