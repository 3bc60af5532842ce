"""mDNS building blocks for discovery (python-zeroconf): the advert's name and TXT record,
opaque tags and hashes, this machine's addresses, opening and closing zeroconf, resolving a
service, and ``find_pairing_host`` for a joiner. ``discovery.Discovery`` runs on these;
what a neighbour learns from the advert is described there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr
from zeroconf import (
    DNSQuestionType,
    IPVersion,
    NotRunningException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from kiana.errors import MeshError

log = logging.getLogger(__name__)


SERVICE_TYPE = "_kiana._tcp.local."
TXT_VERSION = "1"
_TAG_MESSAGE = b"kiana-mdns-tag-v1"
_PAIR_KEY = b"kiana-mdns-pair-v1"

START_TIMEOUT_S = 5.0
"""Longest wait for zeroconf to start or to register/update/unregister a service."""
RESOLVE_TIMEOUT_S = 3.0
"""Longest wait for a seen service's SRV/TXT/A records."""
BROWSE_INTERVAL_MS = 10_000
"""Minimum time between zeroconf's periodic PTR queries (its default)."""
ADDRESS_CHECK_S = 30.0
"""How often a device compares its current addresses with the announced ones."""
CACHE_FLUSH_S = 1.2
"""After a report, look again this much later: superseded records are flushed after 1 s."""
"""How often a device compares its current addresses with the announced ones."""
MAX_PAIRING_ADVERTS = 14
"""Open invitations advertised at once: 14 hashes of 16 hex fit one 255-byte TXT string."""


def mind_tag(mind_id: str) -> str:
    """An opaque tag shared by the devices of one mind: HMAC-SHA256(mind id, domain)[:16 hex]."""
    return hmac.new(mind_id.encode("utf-8"), _TAG_MESSAGE, hashlib.sha256).hexdigest()[:16]


def nameplate_hash(nameplate: int) -> str:
    """The ``pair`` TXT value for an open invitation: the nameplate, not in clear."""
    return hmac.new(_PAIR_KEY, str(nameplate).encode("ascii"), hashlib.sha256).hexdigest()[:16]


def address_hash(addresses: Sequence[str]) -> str:
    """The ``a`` TXT value: changes whenever the announced addresses change."""
    joined = ",".join(sorted(addresses)).encode("ascii")
    return hashlib.sha256(joined).hexdigest()[:8]


def txt_properties(
    tag: str,
    device_id: str,
    pairing: str | Sequence[str] | None = None,
    addresses: Sequence[str] | None = None,
) -> dict[str, str]:
    """The TXT record a device advertises; nothing in it names the mind or a person.

    ``pairing``: the hashed nameplates of the open invitations (one or several);
    ``addresses``: the announced addresses, whose hash goes into ``a``.
    """
    props = {"v": TXT_VERSION, "m": tag, "d": device_id}
    if addresses is not None:
        props["a"] = address_hash(addresses)
    plates = [pairing] if isinstance(pairing, str) else list(pairing or ())
    if plates:
        props["pair"] = ",".join(plates[:MAX_PAIRING_ADVERTS])
    return props


def pairing_hashes(info_value: str | None) -> tuple[str, ...]:
    """The nameplate hashes in a ``pair`` TXT value (none when absent)."""
    return tuple(h for h in (info_value or "").split(",") if h)


def local_ipv4_addresses() -> tuple[str, ...]:
    """Every non-loopback IPv4 address of this host's interfaces, sorted."""
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                addr = ipaddress.IPv4Address(ip.ip)
                if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified):
                    found.add(ip.ip)
    return tuple(sorted(found, key=ipaddress.IPv4Address))


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A device of this mind announced on the local network."""

    device_id: str
    addresses: tuple[str, ...]
    port: int
    pairing: bool


def service_name(device_id: str) -> str:
    return f"{device_id}.{SERVICE_TYPE}"


def short_id(device_id: str) -> str:
    return device_id[:4]


def make_info(
    device_id: str, port: int, addresses: Sequence[str], props: dict[str, str]
) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        service_name(device_id),
        port=port,
        properties=props,
        server=f"kiana-{device_id}.local.",
        parsed_addresses=list(addresses),
    )


def open_zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    try:
        if interfaces is None:
            return AsyncZeroconf(ip_version=IPVersion.V4Only)
        return AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    except OSError as exc:
        raise MeshError(f"mDNS is unavailable on this host: {exc.strerror or exc}") from exc


async def wait_started(azc: AsyncZeroconf) -> None:
    try:
        await azc.zeroconf.async_wait_for_start(timeout=START_TIMEOUT_S)
    except NotRunningException as exc:
        raise MeshError("mDNS did not start in time") from exc


async def close_zeroconf(azc: AsyncZeroconf, browser: AsyncServiceBrowser | None) -> None:
    """Stop browsing, send goodbyes and close; at most START_TIMEOUT_S, then just close."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            if browser is not None:
                await browser.async_cancel()
            await azc.async_close()
    except TimeoutError:
        log.debug("mdns: close timed out; sockets closed without goodbye")
        azc.zeroconf.close()


async def resolve(zc: Zeroconf, name: str) -> AsyncServiceInfo | None:
    """The service's records from the cache, or asked for (at most RESOLVE_TIMEOUT_S)."""
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    found = await info.async_request(zc, RESOLVE_TIMEOUT_S * 1000, question_type=DNSQuestionType.QU)
    return info if found else None


def txt_value(info: AsyncServiceInfo, key: str) -> str | None:
    return info.decoded_properties.get(key)


async def find_pairing_host(
    nameplate: int,
    timeout_s: float,
    *,
    interfaces: Sequence[str] | None = None,
) -> tuple[str, int] | None:
    """For a joiner: the (address, port) of a device advertising ``nameplate``, or None.

    Browses ``_kiana._tcp`` for at most ``timeout_s`` seconds and returns the first
    service whose ``pair`` value matches, whatever its mind.
    """
    wanted = nameplate_hash(nameplate)
    azc = open_zeroconf(interfaces)
    loop = asyncio.get_running_loop()
    found: asyncio.Future[tuple[str, int]] = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()

    async def check(zc: Zeroconf, name: str) -> None:
        info = await resolve(zc, name)
        if (
            info is None
            or info.port is None
            or wanted not in pairing_hashes(txt_value(info, "pair"))
        ):
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if addresses and not found.done():
            found.set_result((addresses[0], info.port))

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            task = loop.create_task(check(zeroconf, name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    browser: AsyncServiceBrowser | None = None
    try:
        await wait_started(azc)
        browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            async with asyncio.timeout(timeout_s):
                return await found
        except TimeoutError:
            return None
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_zeroconf(azc, browser)
