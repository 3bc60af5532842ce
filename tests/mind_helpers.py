"""A mind of several devices in temporary homes, paired in process (no sockets)."""

from __future__ import annotations

import random
from pathlib import Path

from tests.helpers_cli import QUIET_MESH

from kiana.config import Settings, load_settings
from kiana.home import genesis_json
from kiana.identity.keys import DeviceKeys
from kiana.mesh.codes import parse_code
from kiana.mesh.enroll import admit_device, create_joined_home, member_records
from kiana.mesh.pairing import JoinerSession, PairingHost
from kiana.node import Node, now_ms


def quiet_settings(home: Path, **env: str) -> Settings:
    return load_settings(home=home, environ={**QUIET_MESH, **env})


def make_mind(
    root: Path,
    names: list[str],
    *,
    new_person: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
    **env: str,
) -> dict[str, Settings]:
    """Create ``names[0]`` as the authority and pair the others into its mind.

    ``new_person`` maps a device name to the name of a new person it joins as;
    ``roles`` a device name to "authority" or "member".
    """
    new_person = new_person or {}
    roles = roles or {}
    first = names[0]
    homes = {first: quiet_settings(root / first, **env)}
    host = PairingHost(rng=random.Random(1))
    with Node.init(homes[first], mind_name="Family", device_name=first) as inviter:
        inviter.auto_embed = False
        for name in names[1:]:
            settings = quiet_settings(root / name, **env)
            now = now_ms()
            code = host.invite(600_000, now)
            keys = DeviceKeys.generate()
            joiner = JoinerSession(
                parse_code(str(code)), keys, name=name, new_person=new_person.get(name, "")
            )
            session, m2 = host.accept(joiner.start(), now)
            m3 = joiner.receive(m2)
            assert m3 is not None
            request = session.receive(m3, now)
            admit_device(inviter, request, role=roles.get(name, "member"))
            m4 = session.admit(genesis_json(inviter.genesis), member_records(inviter))
            assert joiner.receive(m4) is None
            create_joined_home(settings, keys, joiner.result)
            homes[name] = settings
        records = member_records(inviter)
    # Every device learns every membership record (as the mesh's members channel does).
    from kiana.identity.membership import apply_membership, parse_membership, replay_membership

    for settings in homes.values():
        with Node.open(settings) as node:
            for record in replay_membership(node.genesis, [parse_membership(r) for r in records]):
                apply_membership(node.store, record)
    return homes
