"""Homes of one simulated mind: real KI_ana homes (keys, ``mind.json``, SQLite) built
deterministically, without pairing, as ``kiana pair``/``join`` would leave them.

Device 0 is the genesis authority; ``authorities=2`` makes device 1 an authority as
well. Persons: devices 0, 1 and 3 belong to the genesis person, 2 and 4 to a second
one, so both private sync (same person) and shared-only views are exercised. An extra
``rogue`` device (a member of its own person) can be added for the malicious scenarios.

Keys come from fixed seeds, so every run of a layout has the same device ids and the
homes can be built once and copied (``MindCache``): a simulation's seed then decides
only what happens, not who is who.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from kiana.config import Settings, load_settings
from kiana.home import HomeLayout, initialise_joined_home
from kiana.identity.keys import DeviceKeys
from kiana.identity.membership import apply_membership, sign_membership
from kiana.identity.mind import Genesis, make_genesis
from kiana.mesh.enroll import genesis_device
from kiana.store import BlockStore

START_MS = 1_704_067_200_000  # virtual time zero of every simulation (2024-01-01)
PERSONS = ("p-aaaaaaaa", "p-bbbbbbbb")
ROGUE_PERSON = "p-rrrrrrrr"
QUIET_ENV = {"KIANA_MESH_DISCOVERY": "0", "KIANA_MESH_PORT": "0", "KIANA_MESH_HOST": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    keys: DeviceKeys
    person: str
    role: str  # "authority" | "member"
    rogue: bool = False
    device_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_id", self.keys.device_id)


@dataclass(frozen=True, slots=True)
class MindLayout:
    nodes: int
    authorities: int = 1
    rogue: bool = False

    def key(self) -> str:
        return f"n{self.nodes}-a{self.authorities}-r{int(self.rogue)}"


def device_keys(index: int) -> DeviceKeys:
    seed = hashlib.sha256(b"kiana-sim-device\x00" + index.to_bytes(4, "big")).digest()
    box = hashlib.sha256(b"kiana-sim-box\x00" + seed).digest()
    return DeviceKeys(signing=SigningKey(seed), box=PrivateKey(box))


def specs(layout: MindLayout) -> list[DeviceSpec]:
    out: list[DeviceSpec] = []
    for i in range(layout.nodes):
        role = "authority" if i == 0 or (i == 1 and layout.authorities > 1) else "member"
        person = PERSONS[0] if i in (0, 1, 3) else PERSONS[1]
        out.append(DeviceSpec(f"d{i}", device_keys(i), person, role))
    if layout.rogue:
        out.append(DeviceSpec("rogue", device_keys(99), ROGUE_PERSON, "member", rogue=True))
    return out


def settings_for(home: Path) -> Settings:
    return load_settings(home=home, environ=dict(QUIET_ENV))


def build_mind(root: Path, layout: MindLayout) -> tuple[Genesis, list[DeviceSpec]]:
    """Write one home per device under ``root/<name>``: keys, genesis, members in the DB."""
    devices = specs(layout)
    first = devices[0]
    genesis = make_genesis(
        first.keys,
        name="Simulated",
        device_name=first.name,
        created=START_MS - 60_000,
        person=first.person,
    )
    records = [
        sign_membership(
            first.keys,
            mind=genesis.mind_id,
            action="add",
            device=d.device_id,
            sign_key=d.keys.sign_public,
            box_key=d.keys.box_public,
            role=d.role,
            person=d.person,
            name=d.name,
            created=START_MS - 50_000 + i,
        )
        for i, d in enumerate(devices[1:], 1)
    ]
    for d in devices:
        settings = settings_for(root / d.name)
        initialise_joined_home(settings, d.keys, genesis)
        store = BlockStore.open(
            settings.effective_database_url, backup_dir=HomeLayout(settings.home).backups
        )
        try:
            store.set_meta("mind_id", genesis.mind_id)
            store.set_meta("genesis", genesis_device(genesis).record)
            store.add_device(genesis_device(genesis))
            for record in records:
                apply_membership(store, record)
        finally:
            store.close()
    return genesis, devices


class MindCache:
    """Builds each layout's homes once (in ``root``) and copies them for every run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, tuple[Genesis, list[DeviceSpec]]] = {}

    def copy(self, layout: MindLayout, dest: Path) -> tuple[Genesis, list[DeviceSpec]]:
        key = layout.key()
        template = self.root / key
        if key not in self._built:
            if template.exists():
                shutil.rmtree(template)
            self._built[key] = build_mind(template, layout)
        shutil.copytree(template, dest, dirs_exist_ok=True)
        return self._built[key]


__all__ = [
    "START_MS",
    "DeviceSpec",
    "MindCache",
    "MindLayout",
    "build_mind",
    "device_keys",
    "settings_for",
    "specs",
]
