"""Local discovery of this mind's devices over mDNS/DNS-SD (python-zeroconf, asyncio).

Every node advertises ``<device id>._kiana._tcp.local.`` with the TXT record
``{"v": "1", "m": <mind tag>, "d": <device id>}`` and the mesh port, and browses
the same type. A service whose mind tag equals ours (and whose device is not
ours) is reported as a :class:`PeerSeen`; everything else on the link is ignored.

Addresses move (a laptop joins another network, DHCP renews, an interface comes
up): every ``address_check_s`` (30 s) the device compares its current addresses
with the announced ones, off the event loop, and when they differ sends goodbyes
for the addresses it lost and re-announces with the new ones. The TXT key ``a``
(a short hash of the announced addresses) changes with them, so peers' browsers
report the device again even when an address was only removed.

What a neighbour on the LAN learns: that a KI_ana device is there, its device id
and an opaque 16-hex mind tag, which links devices of the same mind but names
neither the mind nor its owner. While invitations are open, the inviter adds
``{"pair": <nameplate hash>,<nameplate hash>,...}`` (one per open invitation, at
most ``MAX_PAIRING_ADVERTS``) so a joiner (which has no mind tag yet) can find
it. The nameplate is hashed so it is not shown in clear, but with only 999
nameplates this is obfuscation, not secrecy: the pairing code's words are the
secret (see ``pairing``).

The caller decides whether discovery runs at all (``mesh.discovery``). Nothing
here is started at import time; :meth:`Discovery.start` opens the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence

from zeroconf import (
    BadTypeInNameException,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE

from kiana.errors import MeshError
from kiana.mesh.mdns import (
    ADDRESS_CHECK_S,
    BROWSE_INTERVAL_MS,
    CACHE_FLUSH_S,
    MAX_PAIRING_ADVERTS,
    RESOLVE_TIMEOUT_S,
    SERVICE_TYPE,
    START_TIMEOUT_S,
    TXT_VERSION,
    PeerSeen,
    address_hash,
    close_zeroconf,
    find_pairing_host,
    local_ipv4_addresses,
    make_info,
    mind_tag,
    nameplate_hash,
    open_zeroconf,
    pairing_hashes,
    resolve,
    service_name,
    short_id,
    txt_properties,
    txt_value,
    wait_started,
)

log = logging.getLogger(__name__)

__all__ = [
    "ADDRESS_CHECK_S",
    "BROWSE_INTERVAL_MS",
    "CACHE_FLUSH_S",
    "MAX_PAIRING_ADVERTS",
    "RESOLVE_TIMEOUT_S",
    "SERVICE_TYPE",
    "START_TIMEOUT_S",
    "TXT_VERSION",
    "Discovery",
    "PeerSeen",
    "address_hash",
    "find_pairing_host",
    "local_ipv4_addresses",
    "mind_tag",
    "nameplate_hash",
    "pairing_hashes",
    "service_name",
    "txt_properties",
]


class Discovery:
    """Advertise this device and report the mind's other devices seen on the LAN.

    ``on_peer`` is called (on the event loop) whenever a device of the same
    mind appears or its advertisement changes (addresses, port, pairing).
    ``addresses`` are the IPv4 addresses to announce (default: every
    non-loopback IPv4 address of the host, checked again every
    ``address_check_s`` seconds); ``interfaces`` the addresses zeroconf listens
    on (default: all).
    """

    def __init__(
        self,
        *,
        mind_id: str,
        device_id: str,
        port: int,
        on_peer: Callable[[PeerSeen], None],
        addresses: Sequence[str] | None = None,
        interfaces: Sequence[str] | None = None,
        address_check_s: float = ADDRESS_CHECK_S,
    ) -> None:
        if address_check_s <= 0:
            raise ValueError("address_check_s must be positive")
        self.tag = mind_tag(mind_id)
        self.device_id = device_id
        self.port = port
        self.on_peer = on_peer
        self.addresses = tuple(addresses) if addresses is not None else None
        self.interfaces = tuple(interfaces) if interfaces is not None else None
        self.address_check_s = address_check_s
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._announced: tuple[str, ...] = ()
        self._pairing: list[str] = []  # hashed nameplates of the open invitations, in order
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._broadcast: Awaitable[object] | None = None

    @property
    def running(self) -> bool:
        return self._azc is not None

    @property
    def announced_addresses(self) -> tuple[str, ...]:
        """The addresses in the current advertisement (empty before ``start``)."""
        return self._announced

    def _service_info(self, addresses: Sequence[str] | None = None) -> AsyncServiceInfo:
        if addresses is None:
            addresses = self.addresses if self.addresses is not None else local_ipv4_addresses()
        props = txt_properties(
            self.tag,
            self.device_id,
            self._pairing,
            addresses if self.addresses is None else None,
        )
        return make_info(self.device_id, self.port, addresses, props)

    async def _current_addresses(self) -> tuple[str, ...]:
        if self.addresses is not None:
            return self.addresses
        # ifaddr walks the interfaces with getifaddrs(): a system call, so not on the loop
        return await asyncio.to_thread(local_ipv4_addresses)

    async def start(self) -> None:
        """Open mDNS, announce this device and start browsing. ``MeshError`` on failure."""
        if self._azc is not None:
            return
        announced = await self._current_addresses()
        azc = open_zeroconf(self.interfaces)
        self._azc = azc
        try:
            await wait_started(azc)
            # Browse first so answers to our own startup queries are not missed.
            self._browser = AsyncServiceBrowser(
                azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change], delay=BROWSE_INTERVAL_MS
            )
            self._announced = announced
            self._info = self._service_info(self._announced)
            # The instance name is the device id, derived from the device's key, so it
            # is unique by construction: skip the probe (~1 s) and announce at once.
            async with asyncio.timeout(START_TIMEOUT_S):
                self._broadcast = await azc.async_register_service(
                    self._info, cooperating_responders=True
                )
        except (TimeoutError, BadTypeInNameException, OSError) as exc:
            await self.close()
            raise MeshError("could not announce this device over mDNS") from exc
        except BaseException:
            await self.close()
            raise
        if self.addresses is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_addresses())
        log.debug("mdns: announcing device %s on port %d", short_id(self.device_id), self.port)

    async def _watch_addresses(self) -> None:
        """Every ``address_check_s``: re-announce when the host's addresses changed."""
        while self._azc is not None:
            await asyncio.sleep(self.address_check_s)
            try:
                await self.check_addresses()
            except (MeshError, OSError) as exc:
                log.warning("mdns: could not re-announce new addresses: %s", exc)

    async def check_addresses(self) -> bool:
        """Compare the host's addresses with the announced ones; re-announce if they differ.

        True when the advertisement changed. Called by the periodic check; callable
        directly (e.g. on a network-change signal).
        """
        current = await self._current_addresses()
        if self._azc is None or current == self._announced:
            return False
        gone = [a for a in self._announced if a not in current]
        log.info(
            "mdns: addresses changed (%d now, %d gone): re-announcing", len(current), len(gone)
        )
        self._announced = current
        if gone and self.interfaces is None:
            # zeroconf bound one socket to each address it found at start: one whose
            # address is gone can no longer send, so open mDNS afresh on today's addresses.
            await self._reopen(gone)
            return True
        if gone:
            self._send_goodbyes(gone)
        await self._update()
        return True

    async def _reopen(self, gone: Sequence[str]) -> None:
        """Close mDNS, open it on new sockets, withdraw ``gone`` and announce again."""
        azc, browser = self._azc, self._browser
        assert azc is not None
        self._cancel_broadcast()
        await close_zeroconf(azc, browser)
        fresh = open_zeroconf(self.interfaces)
        self._azc = fresh
        try:
            await wait_started(fresh)
            self._browser = AsyncServiceBrowser(
                fresh.zeroconf, SERVICE_TYPE, handlers=[self._on_change], delay=BROWSE_INTERVAL_MS
            )
            self._info = self._service_info(self._announced)
            self._send_goodbyes(gone)  # also flushes records refreshed less than 1 s ago
            async with asyncio.timeout(START_TIMEOUT_S):
                self._broadcast = await fresh.async_register_service(
                    self._info, cooperating_responders=True
                )
        except (TimeoutError, BadTypeInNameException, OSError) as exc:
            raise MeshError("could not announce this device over mDNS again") from exc
        log.debug("mdns: mDNS reopened on %d addresses", len(self._announced))

    def _send_goodbyes(self, gone: Sequence[str]) -> None:
        """Withdraw address records at once (TTL 0), not after peers' 120 s cache time."""
        assert self._azc is not None and self._info is not None
        old = make_info(self.device_id, self.port, gone, {})
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for record in old.dns_addresses(override_ttl=0, version=IPVersion.V4Only):
            out.add_answer_at_time(record, 0)
        with contextlib.suppress(OSError):
            self._azc.zeroconf.async_send(out)

    async def advertise_pairing(self, nameplate: int) -> None:
        """Add the hashed nameplate of an open invitation to this device's advertisement.

        Every open invitation is listed (at most ``MAX_PAIRING_ADVERTS``; later ones
        are reachable only by address until an earlier one closes).
        """
        value = nameplate_hash(nameplate)
        if value in self._pairing:
            return
        self._pairing.append(value)
        if len(self._pairing) > MAX_PAIRING_ADVERTS:
            log.warning(
                "mdns: %d invitations open; only %d are advertised",
                len(self._pairing),
                MAX_PAIRING_ADVERTS,
            )
            return
        await self._update()

    async def stop_pairing(self, nameplate: int | None = None) -> None:
        """Remove an invitation (used, expired or cancelled) from the advertisement.

        Without ``nameplate``: remove every invitation.
        """
        if nameplate is None:
            changed = bool(self._pairing)
            self._pairing = []
        else:
            value = nameplate_hash(nameplate)
            changed = value in self._pairing[:MAX_PAIRING_ADVERTS]
            if value in self._pairing:
                self._pairing.remove(value)
        if changed:
            await self._update()

    @property
    def advertised_pairings(self) -> tuple[str, ...]:
        """The hashed nameplates in the advertisement now."""
        return tuple(self._pairing[:MAX_PAIRING_ADVERTS])

    async def _update(self) -> None:
        if self._azc is None or self._info is None:
            return
        self._info = self._service_info(self._announced)
        self._cancel_broadcast()  # or its repeats would re-announce the old records
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                self._broadcast = await self._azc.async_update_service(self._info)
        except TimeoutError as exc:
            raise MeshError("could not update the mDNS advertisement in time") from exc

    def _cancel_broadcast(self) -> None:
        """Stop the repeats of the last announcement (zeroconf sends three, 225 ms apart)."""
        broadcast, self._broadcast = self._broadcast, None
        if isinstance(broadcast, asyncio.Future):
            broadcast.cancel()

    async def close(self) -> None:
        """Withdraw the advertisement (goodbye packets), stop browsing, close the sockets."""
        self._cancel_broadcast()
        azc, self._azc = self._azc, None
        tasks, self._tasks = self._tasks, set()
        if self._watcher is not None:
            tasks.add(self._watcher)
            self._watcher = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if azc is None:
            return
        browser, self._browser = self._browser, None
        self._info = None
        await close_zeroconf(azc, browser)

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed or self._azc is None:
            return
        task = asyncio.get_running_loop().create_task(self._report(zeroconf, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, zc: Zeroconf, name: str) -> None:
        peer = await self._peer(zc, name)
        if peer is None:
            return
        log.debug(
            "mdns: saw device %s (%d addresses)", short_id(peer.device_id), len(peer.addresses)
        )
        self.on_peer(peer)
        # A re-announcement flushes the address records it no longer carries (RFC 6762
        # 10.2) one second later, silently: look again then, and report what is left.
        await asyncio.sleep(CACHE_FLUSH_S)
        again = await self._peer(zc, name)
        if again is not None and again != peer:
            log.debug(
                "mdns: device %s now has %d addresses",
                short_id(peer.device_id),
                len(again.addresses),
            )
            self.on_peer(again)

    async def _peer(self, zc: Zeroconf, name: str) -> PeerSeen | None:
        info = await resolve(zc, name)
        if info is None:
            log.debug("mdns: a service did not resolve in time")
            return None
        device = txt_value(info, "d")
        if txt_value(info, "v") != TXT_VERSION or txt_value(info, "m") != self.tag or not device:
            return None  # another mind, another version, or not ours to read
        if device == self.device_id or info.port is None:
            return None
        return PeerSeen(
            device_id=device,
            addresses=tuple(
                sorted(info.parsed_addresses(IPVersion.V4Only), key=ipaddress.IPv4Address)
            ),
            port=info.port,
            pairing=bool(pairing_hashes(txt_value(info, "pair"))),
        )
