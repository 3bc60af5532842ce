"""Admitting, listing and revoking devices; setting up a device that joined by pairing.

The glue between the pairing protocol (``mesh/pairing.py``), membership records
(``identity/membership.py``) and a ``Node``, for the CLI and the mesh service.
These functions block (database, files): async callers offload them.

On the inviter::

    request = session.receive(message_3, now)          # a JoinRequest
    admit_device(node, request)                          # signs + stores the record
    message_4 = session.admit(genesis_json(node.genesis), member_records(node))

On the joiner, after ``JoinerSession`` finished: ``create_joined_home(settings, keys,
session.result)``; from then on ``Node.open(settings)`` works.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from kiana.config import Settings
from kiana.errors import HomeError, InputError, NotFoundError
from kiana.home import HomeLayout, initialise_joined_home
from kiana.identity.keys import DeviceKeys
from kiana.identity.membership import (
    ROLES,
    MembershipRecord,
    apply_membership,
    parse_membership,
    replay_membership,
    sign_membership,
)
from kiana.identity.mind import Genesis, new_person_id, parse_genesis
from kiana.mesh.pairing import JoinRequest, JoinResult, verify_welcome
from kiana.store.blocks import BlockStore
from kiana.store.types import Device

if TYPE_CHECKING:
    from kiana.node import Node

_PERSON = re.compile(r"^p-[a-z2-7]{8}$")


def admit_device(
    node: Node,
    request: JoinRequest,
    *,
    role: str = "member",
    person: str | None = None,
    new_person_name: str = "",
) -> MembershipRecord:
    """Sign and store the membership record that admits ``request``'s device.

    The device belongs to ``person`` if given; to a new person if the joiner asked for
    one (``request.new_person``) or ``new_person_name`` is set (the name itself is not
    stored yet: there is no table of persons); otherwise to this device's person.
    """
    me = _require_authority(node, "admit devices")
    if role not in ROLES:
        raise InputError(f"a device's role is 'authority' or 'member', not {role!r}")
    known = node.store.device(request.device)
    if known is not None:
        state = "a revoked device; it must pair with new keys" if not known.active else "a member"
        raise InputError(f"device {request.device} is already {state}")
    if person is not None:
        if not _PERSON.match(person):
            raise InputError(f"{person!r} is not a person id (p- and 8 characters)")
        owner = person
    elif request.new_person or new_person_name:
        owner = new_person_id()
    else:
        owner = me.person
    record = sign_membership(
        node.keys,
        mind=node.mind_id,
        action="add",
        device=request.device,
        sign_key=request.sign_key,
        box_key=request.box_key,
        role=role,
        person=owner,
        name=request.name,
        created=_now(),
    )
    apply_membership(node.store, record)
    return record


def member_records(node: Node) -> list[str]:
    """Every membership record the node holds, adds then revocations, as JSON texts.

    The genesis authority needs no record (every device knows it from ``mind.json``);
    a revocation of it is included.
    """
    out: list[str] = []
    for d in node.store.devices():
        if d.device_id != node.genesis.device and d.record not in out:
            out.append(d.record)
    for text in _revocation_records(node.store):
        if text not in out:
            out.append(text)
    return out


def revoke_device(node: Node, device_id: str) -> MembershipRecord:
    """Sign and store the revocation of ``device_id`` (a full id or a unique prefix)."""
    _require_authority(node, "revoke devices")
    target = _find_device(node.store, device_id)
    if target.device_id == node.device_id:
        raise InputError("a device cannot revoke itself; revoke it from another authority device")
    if not target.active:
        raise InputError(f"device {target.device_id} is already revoked")
    if target.role == "authority":
        authorities = [d for d in node.store.devices() if d.active and d.role == "authority"]
        if len(authorities) <= 1:
            raise InputError("cannot revoke the last authority of the mind")
    record = sign_membership(
        node.keys,
        mind=node.mind_id,
        action="revoke",
        device=target.device_id,
        sign_key=target.sign_key,
        box_key=target.box_key,
        role=target.role,
        person=target.person,
        name=target.name,
        created=_now(),
    )
    apply_membership(node.store, record)
    return record


def create_joined_home(settings: Settings, keys: DeviceKeys, result: JoinResult) -> None:
    """Write the joined device's home and seed its database with the mind's members.

    Verifies ``result`` again (genesis, every record, this device admitted), writes
    keys, ``mind.json``, token and config, then records the mind id, the genesis
    authority and every membership record in the database, as ``Node`` expects.
    Nothing is written unless ``result`` verifies; if the database step fails, the
    home's files exist and the error says why (remove the home to retry).
    """
    layout = HomeLayout(settings.home)
    if layout.is_initialised():
        raise HomeError(
            f"{settings.home} already holds a KI_ana mind; refusing to overwrite it. "
            "Use another KIANA_HOME (or --home) to join another mind."
        )
    records = list(result.member_records)
    verify_welcome(result.genesis_json, records, keys)
    genesis = parse_genesis(result.genesis_json)
    ordered = replay_membership(genesis, [parse_membership(t) for t in records])
    initialise_joined_home(settings, keys, genesis)
    store = BlockStore.open(settings.effective_database_url, backup_dir=layout.backups)
    try:
        recorded = store.get_meta("mind_id")
        if recorded is None:
            store.set_meta("mind_id", genesis.mind_id)
            store.set_meta("genesis", json.dumps(genesis.to_dict(), sort_keys=True))
            store.add_device(genesis_device(genesis))
        elif recorded != genesis.mind_id:
            raise HomeError(
                f"the database belongs to {recorded}, not to the joined mind {genesis.mind_id}; "
                "check storage.database_url"
            )
        for record in ordered:
            apply_membership(store, record)
        if store.device_key(keys.device_id) != keys.sign_public:
            raise HomeError(f"this device ({keys.device_id}) was not admitted to the mind")
    finally:
        store.close()


def genesis_device(genesis: Genesis) -> Device:
    """The genesis authority's row in ``devices`` (the same as ``Node`` seeds)."""
    record = json.dumps(genesis.to_dict(), sort_keys=True)
    return Device(
        device_id=genesis.device,
        sign_key=genesis.sign_key,
        box_key=genesis.box_key,
        role="authority",
        person=genesis.person,
        name=genesis.device_name,
        added=genesis.created,
        record=record,
    )


def _require_authority(node: Node, what: str) -> Device:
    me = node.store.device(node.device_id)
    if me is None or not me.active or me.role != "authority":
        raise InputError(f"only an authority device can {what}; this device is a member")
    return me


def _find_device(store: BlockStore, device_id: str) -> Device:
    wanted = device_id.strip().lower()
    devices = store.devices()
    exact = [d for d in devices if d.device_id == wanted]
    if exact:
        return exact[0]
    matches = [d for d in devices if wanted and d.device_id.startswith(wanted)]
    if not matches:
        raise NotFoundError(f"no device {device_id!r} in this mind")
    if len(matches) > 1:
        raise InputError(f"{device_id!r} matches {len(matches)} devices; give more of the id")
    return matches[0]


def _revocation_records(store: BlockStore) -> list[str]:
    # BlockStore.devices() does not return revoke_record; read it here.
    rows = store.db.read(
        lambda c: c.all(
            "SELECT revoke_record FROM devices WHERE revoked IS NOT NULL"
            " ORDER BY revoked, device_id"
        )
    )
    return [str(r[0]) for r in rows if r[0]]


def _now() -> int:
    return int(time.time() * 1000)


__all__ = [
    "admit_device",
    "create_joined_home",
    "genesis_device",
    "member_records",
    "revoke_device",
]
