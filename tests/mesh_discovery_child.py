"""A discovery node for the namespace tests and the benchmark (run inside a namespace).

    python tests/mesh_discovery_child.py node --mind M --device D [--port P]
        [--pairing NAMEPLATE]... [--address-check S]
        [--drop-pairing NAMEPLATE [--drop-after S]] [--duration S]
    python tests/mesh_discovery_child.py find --nameplate N [--timeout S]
    python tests/mesh_discovery_child.py plain --mind M --device D [--port P] [--duration S]

``node`` prints one JSON line per event: ``{"event": "starting", "t": ...}`` just
before ``Discovery.start()``, ``{"event": "started", ...}`` after it, and
``{"event": "peer", "device": ..., "addresses": [...], "port": ..., "pairing": ...,
"t": ...}`` for every peer report; it runs until SIGTERM/SIGINT or ``--duration``.
``plain`` does the same with zeroconf used as its documentation shows (probe
before announcing, resolve with ``async_get_service_info``): the benchmark's
baseline. ``find`` prints ``{"event": "found", "host": [address, port] or null}``.
Times are ``time.time()`` (one clock for every namespace of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from kiana.mesh.discovery import (
    SERVICE_TYPE,
    Discovery,
    PeerSeen,
    find_pairing_host,
    local_ipv4_addresses,
    mind_tag,
    txt_properties,
)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def node(args: argparse.Namespace) -> None:
    def on_peer(peer: PeerSeen) -> None:
        emit(
            "peer",
            device=peer.device_id,
            addresses=list(peer.addresses),
            port=peer.port,
            pairing=peer.pairing,
        )

    discovery = Discovery(
        mind_id=args.mind,
        device_id=args.device,
        port=args.port,
        on_peer=on_peer,
        address_check_s=args.address_check,
    )
    emit("starting")
    await discovery.start()
    try:
        emit("started", addresses=list(discovery.announced_addresses))
        for nameplate in args.pairing or ():
            await discovery.advertise_pairing(nameplate)
            emit("pairing")
        if args.drop_pairing is not None:
            await asyncio.sleep(args.drop_after)
            await discovery.stop_pairing(args.drop_pairing)
            emit("dropped", nameplate=args.drop_pairing)
        await wait_for_stop(args.duration)
    finally:
        await discovery.close()
    emit("closed")


async def wait_for_stop(duration: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.timeout(duration):
            await stop.wait()
    except TimeoutError:
        pass


async def plain(args: argparse.Namespace) -> None:
    tag = mind_tag(args.mind)
    emit("starting")
    azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    tasks: set[asyncio.Task[None]] = set()

    async def resolve(name: str) -> None:
        info = await azc.async_get_service_info(SERVICE_TYPE, name, timeout=3000)
        if info is None or info.decoded_properties.get("m") != tag:
            return
        device = info.decoded_properties.get("d")
        if device != args.device:
            emit("peer", device=device, addresses=info.parsed_addresses(), port=info.port)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            task = asyncio.get_running_loop().create_task(resolve(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{args.device}.{SERVICE_TYPE}",
        port=args.port,
        properties=txt_properties(tag, args.device),
        server=f"kiana-{args.device}.local.",
        parsed_addresses=list(local_ipv4_addresses()),
    )
    await azc.async_register_service(info)
    emit("started")
    await wait_for_stop(args.duration)
    for task in list(tasks):
        task.cancel()
    await browser.async_cancel()
    await azc.async_close()
    emit("closed")


async def find(args: argparse.Namespace) -> None:
    host = await find_pairing_host(args.nameplate, args.timeout)
    emit("found", host=None if host is None else list(host))


def main(argv: list[str]) -> None:
    if os.environ.get("KIANA_CHILD_DEBUG"):
        logging.basicConfig(level=logging.DEBUG)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p_node = sub.add_parser("node")
    p_plain = sub.add_parser("plain")
    for p in (p_node, p_plain):
        p.add_argument("--mind", required=True)
        p.add_argument("--device", required=True)
        p.add_argument("--port", type=int, default=7475)
        p.add_argument("--duration", type=float, default=60.0)
    p_node.add_argument("--pairing", type=int, action="append")
    p_node.add_argument("--address-check", type=float, default=30.0)
    p_node.add_argument("--drop-pairing", type=int)
    p_node.add_argument("--drop-after", type=float, default=1.0)
    p_find = sub.add_parser("find")
    p_find.add_argument("--nameplate", type=int, required=True)
    p_find.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    commands = {"node": node, "plain": plain, "find": find}
    asyncio.run(commands[args.command](args))


if __name__ == "__main__":
    main(sys.argv[1:])
