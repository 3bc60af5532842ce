"""Helpers for mesh tests: nodes in temporary homes and in-process services on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.helpers_cli import QUIET_MESH

from kiana.config import Settings, load_settings
from kiana.mesh.pairing_service import join_mind
from kiana.mesh.service import MeshService
from kiana.node import Node

LOOPBACK_ENV = {**QUIET_MESH, "KIANA_MESH_HEARTBEAT_MS": "200"}


def settings_for(home: Path, **env: str) -> Settings:
    return load_settings(home=home, environ={**LOOPBACK_ENV, **env})


def init_node(home: Path, name: str = "laptop", **env: str) -> Settings:
    settings = settings_for(home, **env)
    Node.init(settings, mind_name="Family", device_name=name).close()
    return settings


async def start_service(settings: Settings, seed: int = 1) -> MeshService:
    node = await asyncio.to_thread(Node.open, settings)
    mesh = MeshService(node, settings, seed=seed)
    await mesh.start()
    return mesh


async def stop_service(mesh: MeshService) -> None:
    await mesh.stop()
    await asyncio.to_thread(mesh.node.close)


async def pair_into(inviter: MeshService, home: Path, name: str, **env: str) -> Settings:
    """Pair a new device in ``home`` with ``inviter`` over loopback TCP."""
    settings = settings_for(home, **env)
    invite = await inviter.pairing.invite()
    await join_mind(settings, invite.code, address=f"127.0.0.1:{inviter.port}", name=name)
    return settings


async def until(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def until_async(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def linked(a: MeshService, b: MeshService) -> bool:
    pa = a.peers.get(b.node.device_id)
    pb = b.peers.get(a.node.device_id)
    return bool(
        pa
        and pa.link
        and pa.link.state.value == "up"
        and pb
        and pb.link
        and pb.link.state.value == "up"
    )
