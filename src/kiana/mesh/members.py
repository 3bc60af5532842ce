"""Who belongs to the mind, as the mesh sees it: a cache over the ``devices`` table.

Handshakes ask ``lookup`` on the event loop, so it answers from memory. A device
this node has not heard of yet may present its membership record in the
handshake; if an authority known here signed it, the device is admitted (the
record is written to the store after the handshake) exactly as if the record
had arrived on the ``members`` channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from kiana.errors import KianaError
from kiana.identity.membership import (
    MembershipRecord,
    apply_membership,
    device_of,
    parse_membership,
    verify_membership,
)
from kiana.node import Node
from kiana.store.types import Device

log = logging.getLogger("kiana.mesh")
P = ParamSpec("P")
T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]


class MemberDirectory:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._devices: dict[str, Device] = {d.device_id: d for d in node.store.devices()}
        self._pending: dict[str, MembershipRecord] = {}
        self._revocations: list[str] = self._read_revocations()

    async def refresh(self, run: Runner) -> None:
        devices = await run(self.node.store.devices)
        self._devices = {d.device_id: d for d in devices}
        self._revocations = await run(self._read_revocations)

    def _read_revocations(self) -> list[str]:
        rows = self.node.store.db.read(
            lambda c: c.all("SELECT revoke_record FROM devices WHERE revoked IS NOT NULL")
        )
        return [str(r[0]) for r in rows if r[0]]

    # -- queries (event loop, from memory) -------------------------------------------

    def lookup(self, device_id: str, record: str | None = None) -> Device | None:
        known = self._devices.get(device_id)
        if known is not None or record is None:
            return known
        try:
            parsed = parse_membership(record)
            self._verify(parsed)
        except KianaError as exc:
            log.warning("a peer presented an invalid membership record: %s", exc.code)
            return None
        if parsed.action != "add" or parsed.device != device_id:
            return None
        self._pending[device_id] = parsed
        return device_of(parsed)

    def _verify(self, record: MembershipRecord) -> None:
        verify_membership(record, mind_id=self.node.mind_id, authority_key=self.authority_key)

    def authority_key(self, device_id: str) -> bytes | None:
        d = self._devices.get(device_id)
        if d is None or not d.active or d.role != "authority":
            return None
        return d.sign_key

    def box_key(self, device_id: str) -> bytes | None:
        d = self._devices.get(device_id)
        return d.box_key if d is not None and d.active else None

    def is_active(self, device_id: str) -> bool:
        d = self._devices.get(device_id)
        return d is not None and d.active

    def name(self, device_id: str) -> str:
        d = self._devices.get(device_id)
        return d.name if d is not None else ""

    def devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: (d.added, d.device_id))

    def own_record(self) -> str | None:
        me = self._devices.get(self.node.device_id)
        if me is None or me.device_id == self.node.genesis.device:
            return None  # the genesis authority is known to every device from mind.json
        return me.record

    def records_blob(self) -> bytes:
        """Every membership record this node holds (adds and revocations), as JSON."""
        records = [d.record for d in self.devices() if d.device_id != self.node.genesis.device]
        return json.dumps({"records": records + self._revocations}).encode()

    # -- changes (store writes go through ``run``) ------------------------------------

    async def admit_from_handshake(self, device_id: str, run: Runner) -> None:
        record = self._pending.pop(device_id, None)
        if record is None:
            return
        await run(apply_membership, self.node.store, record)
        await self.refresh(run)
        log.info("admitted device %s from its membership record", device_id)

    async def apply_blob(self, body: bytes, run: Runner) -> list[str]:
        """Apply records from a peer; returns the devices newly revoked."""
        try:
            raw = json.loads(body)
            texts = raw["records"]
            if not isinstance(texts, list):
                raise TypeError
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable membership list from a peer")
            raise _bad("unreadable membership list") from exc
        revoked: list[str] = []
        # Adds before revocations, authorities first, until nothing changes (a record may be
        # signed by an authority that another record in the same list admits).
        pending = [t for t in texts if isinstance(t, str)]
        progress = True
        while pending and progress:
            progress = False
            for text in list(pending):
                try:
                    record = parse_membership(text)
                    self._verify(record)
                except KianaError:
                    continue
                pending.remove(text)
                was_active = self.is_active(record.device)
                changed = await run(apply_membership, self.node.store, record)
                if changed:
                    progress = True
                    await self.refresh(run)
                    if record.action == "revoke" and was_active:
                        revoked.append(record.device)
        if pending:
            log.warning("%d membership records from a peer were refused", len(pending))
        return revoked


def _bad(message: str) -> KianaError:
    from kiana.errors import MessageError

    return MessageError(message)
