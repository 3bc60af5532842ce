"""Pairing over the network: the inviter's side inside ``MeshService``, and ``join_mind``.

The sans-I/O protocol is in ``pairing.py``; this module moves its messages over a
TCP connection with the pairing preamble, advertises open codes by mDNS, admits
the device (``enroll.py``) and tells the mind's other devices about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiana.config import Settings
from kiana.errors import HomeError, KianaError, PairingError, PeerUnreachableError
from kiana.home import HomeLayout, genesis_json
from kiana.identity.keys import DeviceKeys
from kiana.mesh.codes import parse_code
from kiana.mesh.enroll import admit_device, create_joined_home, member_records
from kiana.mesh.pairing import (
    MAX_WELCOME_BYTES,
    HostSession,
    JoinerSession,
    PairingHost,
    abort_message,
)
from kiana.mesh.tcp import PURPOSE_PAIR, FramedStream, format_address, open_framed, parse_address

if TYPE_CHECKING:
    from kiana.mesh.service import MeshService

log = logging.getLogger("kiana.mesh")
STEP_TIMEOUT_S = 30.0


def _now() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class InviteInfo:
    code: str
    nameplate: int
    expires: int
    port: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "nameplate": self.nameplate,
            "expires": self.expires,
            "port": self.port,
        }


class PairingService:
    def __init__(self, mesh: MeshService) -> None:
        self.mesh = mesh
        self.host = PairingHost()
        self._states: dict[int, dict[str, Any]] = {}
        self._expires: dict[int, int] = {}
        self._roles: dict[int, str] = {}
        self._changed: dict[int, asyncio.Event] = {}

    async def invite(self, *, ttl_s: int | None = None, role: str = "member") -> InviteInfo:
        me = self.mesh.directory.lookup(self.mesh.node.device_id)
        if me is None or me.role != "authority":
            raise PairingError("only an authority device can invite; run 'kiana pair' on one")
        ttl_ms = (ttl_s or self.mesh.settings.pairing_ttl) * 1000
        now = _now()
        code = self.host.invite(ttl_ms, now)
        plate = code.nameplate
        self._states[plate] = {"nameplate": plate, "state": "waiting"}
        self._expires[plate] = now + ttl_ms
        self._roles[plate] = role
        self._changed[plate] = asyncio.Event()
        discovery = self.mesh._discovery
        if discovery is not None:
            with contextlib.suppress(KianaError, OSError):
                await discovery.advertise_pairing(plate)
        self.mesh._spawn(self._expire_later(plate, ttl_ms / 1000))
        return InviteInfo(str(code), plate, now + ttl_ms, self.mesh.port)

    async def _expire_later(self, plate: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self._states.get(plate, {}).get("state") == "waiting":
            self.host.cancel(plate)
            await self._set(plate, {"state": "expired"})

    async def _set(self, plate: int, values: dict[str, Any]) -> None:
        self._states[plate] = {"nameplate": plate, **values}
        event = self._changed.get(plate)
        if event is not None:
            event.set()
        if values["state"] != "waiting":
            # only this invitation leaves the advertisement; other open codes stay findable
            discovery = self.mesh._discovery
            if discovery is not None:
                with contextlib.suppress(KianaError, OSError):
                    await discovery.stop_pairing(plate)

    def state(self, nameplate: int) -> dict[str, Any]:
        found = self._states.get(nameplate)
        if found is None:
            from kiana.errors import NotFoundError

            raise NotFoundError(f"no pairing code {nameplate} was made by this node")
        return dict(found)

    async def wait(self, nameplate: int, timeout_s: float | None = None) -> dict[str, Any]:
        event = self._changed[nameplate]
        async with asyncio.timeout(timeout_s):
            while self._states[nameplate]["state"] == "waiting":
                event.clear()
                await event.wait()
        return self.state(nameplate)

    # -- one incoming pairing connection -------------------------------------------------

    async def serve(self, stream: FramedStream) -> None:
        session: HostSession | None = None
        try:
            first = await asyncio.wait_for(stream.read_frame(), STEP_TIMEOUT_S)
            try:
                session, reply = self.host.accept(first, _now())
            except PairingError as exc:
                log.warning("pairing attempt from %s refused: %s", stream.remote, exc.code)
                await _send(stream, abort_message(exc))
                return
            await _send(stream, reply)
            third = await asyncio.wait_for(stream.read_frame(), STEP_TIMEOUT_S)
            request = session.receive(third, _now())
            role = self._roles.get(session.nameplate, "member")
            record = await self.mesh._run(
                admit_device,
                self.mesh.node,
                request,
                role=role,
                new_person_name=request.new_person,
            )
            records = await self.mesh._run(member_records, self.mesh.node)
            await _send(stream, session.admit(genesis_json(self.mesh.node.genesis), records))
            await self._set(
                session.nameplate, {"state": "joined", "device": record.device, "name": record.name}
            )
            log.info("device %s joined the mind", record.device)
            await self.mesh.directory.refresh(self.mesh._run)
            await self.mesh.announce_members()
        except PairingError as exc:
            log.warning("pairing from %s failed: %s", stream.remote, exc.code)
            if session is not None:
                await self._set(session.nameplate, {"state": "failed", "error": exc.message})
                with contextlib.suppress(ConnectionError, OSError):
                    await _send(stream, abort_message(exc))
        except (TimeoutError, EOFError, KianaError, ConnectionError, OSError) as exc:
            log.warning("pairing from %s broke off: %s", stream.remote, type(exc).__name__)
            if session is not None:
                message = exc.message if isinstance(exc, KianaError) else "connection lost"
                await self._set(session.nameplate, {"state": "failed", "error": message})
        finally:
            await stream.close()


async def _send(stream: FramedStream, data: bytes) -> None:
    stream.write_frames([data])
    await stream.drain()


# -- the joining device ------------------------------------------------------------------


async def join_mind(
    settings: Settings,
    code_text: str,
    *,
    address: str | None = None,
    name: str = "",
    new_person: str = "",
    timeout_s: float = 20.0,
) -> dict[str, Any]:
    """Pair this (uninitialised) home with a mind; returns what was joined."""
    layout = HomeLayout(settings.home)
    if layout.is_initialised():
        raise HomeError(
            f"{settings.home} already holds a KI_ana mind; join from an empty home (--home DIR)"
        )
    code = parse_code(code_text)
    if address:
        try:
            host, port = parse_address(address, settings.mesh_port)
        except ValueError as exc:
            raise PairingError(f"not a host:port address: {address!r}") from exc
    else:
        from kiana.mesh.discovery import find_pairing_host

        found = await find_pairing_host(code.nameplate, timeout_s)
        if found is None:
            raise PeerUnreachableError(
                f"no device offering code {code.nameplate} answered on this network within "
                f"{timeout_s:g} s; is 'kiana pair' running? Otherwise use --address host:port"
            )
        host, port = found
    keys = DeviceKeys.generate()
    session = JoinerSession(
        code, keys, name=name or socket.gethostname() or "device", new_person=new_person
    )
    stream = await open_framed(
        host, port, PURPOSE_PAIR, max_frame=MAX_WELCOME_BYTES + 1024, timeout_s=timeout_s
    )
    try:
        await _send(stream, session.start())
        second = await _read(stream, timeout_s)
        try:
            third = session.receive(second)
        except PairingError as exc:
            with contextlib.suppress(ConnectionError, OSError):
                await _send(stream, abort_message(exc))
            raise
        assert third is not None
        await _send(stream, third)
        session.receive(await _read(stream, timeout_s))
    finally:
        await stream.close()
    result = session.result
    await asyncio.to_thread(create_joined_home, settings, keys, result)
    await asyncio.to_thread(_remember_inviter, settings, format_address(host, port))
    from kiana.identity.membership import parse_membership
    from kiana.identity.mind import parse_genesis

    genesis = parse_genesis(result.genesis_json)
    mine = [parse_membership(r) for r in result.member_records]
    me = next(r for r in mine if r.device == keys.device_id and r.action == "add")
    return {
        "mind": genesis.mind_id,
        "mind_name": genesis.name,
        "device": keys.device_id,
        "role": me.role,
        "person": me.person,
        "inviter": format_address(host, port),
    }


async def _read(stream: FramedStream, timeout_s: float) -> bytes:
    try:
        return await asyncio.wait_for(stream.read_frame(), timeout_s)
    except TimeoutError as exc:
        raise PeerUnreachableError("the inviting device stopped answering") from exc
    except EOFError as exc:
        raise PairingError("the inviting device closed the connection") from exc


def _remember_inviter(settings: Settings, address: str) -> None:
    """Keep the inviter's address so ``kiana serve`` links to it even without mDNS."""
    from kiana.node import Node

    with Node.open(settings) as node:
        node.store.db.write(
            lambda c: c.execute(
                "INSERT INTO mesh_addresses (address, device_id, source, added)"
                " VALUES (?, '', 'pairing', ?) ON CONFLICT (address) DO NOTHING",
                (address, _now()),
            )
        )
