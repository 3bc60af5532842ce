"""An inviting device for the namespace pairing test (run inside a namespace).

    python tests/mesh_pairing_child.py --home H --codes N [--duration S]

Creates a mind in ``H``, serves the mesh on port 7475 with mDNS discovery on, opens
``N`` invitations at once and prints one JSON line per event:
``{"event": "invite", "code": ..., "nameplate": ...}`` for each code, then
``{"event": "state", "nameplate": ..., "state": ...}`` whenever one closes
(joined, expired, failed). It stops when every invitation closed, on
SIGTERM/SIGINT, or after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from kiana.config import load_settings
from kiana.mesh.service import MeshService
from kiana.node import Node

ENV = {"KIANA_MESH_PORT": "7475", "KIANA_MESH_HOST": "0.0.0.0", "KIANA_MESH_DISCOVERY": "1"}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def inviter(home: Path, codes: int, duration: float) -> None:
    settings = load_settings(home=home, environ=ENV)
    await asyncio.to_thread(
        lambda: Node.init(settings, mind_name="Family", device_name="laptop").close()
    )
    node = await asyncio.to_thread(Node.open, settings)
    mesh = MeshService(node, settings, seed=1)
    await mesh.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        invites = [await mesh.pairing.invite() for _ in range(codes)]
        for invite in invites:
            emit("invite", code=invite.code, nameplate=invite.nameplate)

        async def watch(plate: int) -> None:
            state = await mesh.pairing.wait(plate)
            emit("state", nameplate=plate, state=state["state"])

        watchers = asyncio.gather(*(watch(i.nameplate) for i in invites))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({watchers, stopped}, timeout=duration, return_when="FIRST_COMPLETED")
        watchers.cancel()
        stopped.cancel()
        await asyncio.gather(watchers, stopped, return_exceptions=True)
    finally:
        await mesh.stop()
        await asyncio.to_thread(node.close)
    emit("closed")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--codes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    asyncio.run(inviter(args.home, args.codes, args.duration))


if __name__ == "__main__":
    main(sys.argv[1:])
