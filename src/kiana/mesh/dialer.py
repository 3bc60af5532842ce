"""How ``MeshService`` finds and reaches peers: addresses, mDNS, dialling, WebRTC triggering.

Addresses come from the settings (``mesh.peers``), ``kiana peers add`` (stored in
``mesh_addresses``), mDNS and handshakes. ``_dialer`` is the one loop that decides
whom to dial: known devices without a direct link (with backoff), manual addresses
whose device is not known yet, and, through ``_maybe_webrtc``, active members that no
address reaches. ``connect`` opens a direct TCP link and hands it to
``MeshService._serve_link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from kiana.errors import KianaError, MeshError, PeerUnreachableError
from kiana.mesh.carrier import Carrier
from kiana.mesh.health import Backoff
from kiana.mesh.link import Link
from kiana.mesh.service_base import MeshBase, _Peer, now_ms
from kiana.mesh.tcp import PURPOSE_LINK, format_address, open_framed, parse_address

if TYPE_CHECKING:
    from kiana.mesh.mdns import PeerSeen
    from kiana.mesh.service import MeshService

log = logging.getLogger("kiana.mesh")


class DialerMixin(MeshBase):
    """Addresses, discovery and dialling for ``MeshService``."""

    manual: dict[str, str]  # "host:port" -> source, device unknown until linked
    port: int
    max_frame: int
    _wake: asyncio.Event
    _discovery: Any
    _dialing_manual: set[str]

    if TYPE_CHECKING:  # defined by MeshService (service.py), which serves every link

        async def _serve_link(
            self, stream: Carrier, link: Link, kind: str, up: asyncio.Future[str] | None
        ) -> None: ...

    # -- discovery and addresses -------------------------------------------------------

    def _on_discovered(self, p: PeerSeen) -> None:
        """mDNS reported a device of this mind: its current addresses replace the ones
        mDNS reported before (a device that moved is not dialled at its old address);
        addresses from other sources stay."""
        if p.pairing or p.device_id == self.node.device_id:
            return
        current = {format_address(host, p.port) for host in p.addresses}
        peer = self.peers.get(p.device_id)
        if peer is not None:
            for address, source in list(peer.addresses.items()):
                if source == "mdns" and address not in current:
                    del peer.addresses[address]
        for address in sorted(current):
            self.learn_address(p.device_id, address, "mdns")

    async def _start_discovery(self) -> None:
        from kiana.mesh.discovery import Discovery

        try:
            self._discovery = Discovery(
                mind_id=self.node.mind_id,
                device_id=self.node.device_id,
                port=self.port,
                on_peer=self._on_discovered,
            )
            await self._discovery.start()
        except (OSError, KianaError) as exc:
            log.warning("mDNS discovery unavailable: %s", exc)
            self._discovery = None

    def learn_address(self, device: str, address: str, source: str) -> None:
        if device == self.node.device_id:
            return
        peer = self.peers.setdefault(device, _Peer(device))
        fresh = address not in peer.addresses
        peer.addresses[address] = source
        if fresh:
            peer.next_dial = 0
            if peer.link is not None and peer.kind == "relayed":
                log.info("direct address learned for a relayed peer: upgrading")
            self._wake.set()

    def _add_manual(self, text: str, source: str, device: str = "") -> str:
        host, port = parse_address(text, self.settings.mesh_port)
        address = format_address(host, port)
        if device:
            self.learn_address(device, address, source)
        else:
            self.manual[address] = source
        self._wake.set()
        return address

    async def add_address(self, text: str) -> str:
        """``kiana peers add host:port``: remember and dial an address (device learned on link)."""
        try:
            address = self._add_manual(text, "manual")
        except ValueError as exc:
            from kiana.errors import InputError

            raise InputError(f"not a host:port address: {text!r}") from exc
        await self._run(self._store_address, address, "")
        return address

    def _stored_addresses(self) -> list[tuple[str, str]]:
        rows = self.node.store.db.read(
            lambda c: c.all("SELECT address, device_id FROM mesh_addresses ORDER BY added")
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def _store_address(self, address: str, device: str) -> None:
        self.node.store.db.write(
            lambda c: c.execute(
                "INSERT INTO mesh_addresses (address, device_id, source, added) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE SET device_id = excluded.device_id",
                (address, device, "manual", now_ms()),
            )
        )

    # -- dialing ---------------------------------------------------------------------------

    async def _dialer(self) -> None:
        while True:
            now = now_ms()
            for peer in list(self.peers.values()):
                wants_direct = peer.link is None or peer.kind == "relayed"
                if not wants_direct or peer.dialing or now < peer.next_dial:
                    continue
                if not peer.addresses or not self.directory.is_active(peer.device):
                    continue
                peer.dialing = True
                self._spawn(self._dial_peer(peer))
            if self.relay is not None:
                self._maybe_webrtc(now)
            for address in list(self.manual):
                if address not in self._dialing_manual and not self._linked_address(address):
                    self._dialing_manual.add(address)
                    self._spawn(self._dial_manual(address))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    def _maybe_webrtc(self, now: int) -> None:
        """Peers we cannot reach directly get a WebRTC link, signalled through a linked peer.

        Only the device with the smaller id makes the offer, so two offers never cross.
        """
        if not any(p.link is not None for p in self.peers.values()):
            return  # no path for the signalling
        for d in self.directory.devices():
            device = d.device_id
            if not d.active or device == self.node.device_id or self.node.device_id > device:
                continue
            peer = self.peers.setdefault(device, _Peer(device))
            if peer.link is not None or peer.dialing or now < peer.next_dial:
                continue
            if peer.addresses and peer.backoff is None:
                continue  # a direct address not tried yet: TCP first
            peer.dialing = True
            self._spawn(self._dial_webrtc(peer))

    async def _dial_webrtc(self, peer: _Peer) -> None:
        assert self.relay is not None
        try:
            await self.relay.connect(peer.device)
        except MeshError as exc:
            peer.last_error = exc.message
            log.info("WebRTC link to %s failed: %s", peer.device, exc.code)
        finally:
            peer.dialing = False
            if peer.link is None:
                peer.backoff = peer.backoff or Backoff(self.rng)
                peer.next_dial = now_ms() + peer.backoff.next_delay()

    def _linked_address(self, address: str) -> bool:
        return any(p.link is not None and address in p.addresses for p in self.peers.values())

    async def _dial_peer(self, peer: _Peer) -> None:
        try:
            for address in list(peer.addresses):
                host, port = parse_address(address, self.settings.mesh_port)
                try:
                    await self.connect(host, port, expect=peer.device)
                    return
                except MeshError as exc:
                    peer.last_error = exc.message
        finally:
            peer.dialing = False
            if peer.link is None or peer.kind == "relayed":
                peer.backoff = peer.backoff or Backoff(self.rng)
                peer.next_dial = now_ms() + peer.backoff.next_delay()

    async def _dial_manual(self, address: str) -> None:
        backoff = Backoff(self.rng)
        try:
            while not self._closing and address in self.manual:
                if self._linked_address(address):
                    await asyncio.sleep(1.0)
                    continue
                host, port = parse_address(address, self.settings.mesh_port)
                try:
                    device = await self.connect(host, port)
                    self.learn_address(device, address, self.manual[address])
                    await self._run(self._store_address, address, device)
                    backoff.reset()
                    await asyncio.sleep(1.0)
                except MeshError:
                    await asyncio.sleep(backoff.next_delay() / 1000)
        finally:
            self._dialing_manual.discard(address)

    async def connect(
        self, host: str, port: int, *, expect: str | None = None, timeout_s: float = 5.0
    ) -> str:
        """Open a direct link; returns the peer's device id once the handshake completed."""
        stream = await open_framed(
            host, port, PURPOSE_LINK, max_frame=self.max_frame, timeout_s=timeout_s
        )
        link = self._new_link(initiator=True, expect=expect)
        up: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._spawn(self._serve_link(stream, link, "direct", up))
        try:
            return await asyncio.wait_for(asyncio.shield(up), timeout_s)
        except TimeoutError as exc:
            link.close("handshake timed out")
            raise PeerUnreachableError(f"no handshake with {host}:{port} in time") from exc

    def _new_link(self, *, initiator: bool, expect: str | None = None) -> Link:
        return Link(
            initiator=initiator,
            keys=self.node.keys,
            mind_id=self.node.mind_id,
            lookup=self.directory.lookup,
            now=now_ms(),
            heartbeat_ms=self.settings.mesh_heartbeat_ms,
            max_frame=self.max_frame,
            expect=expect,
            record=self.directory.own_record(),
        )


def _make_rtc(service: MeshService) -> Any:
    """The WebRTC manager when aiortc (the ``webrtc`` extra) is installed, else None."""
    try:
        from kiana.mesh.rtc import RtcManager
    except ImportError:
        log.info("WebRTC links unavailable: install kiana[webrtc]")
        return None
    return RtcManager(service)
