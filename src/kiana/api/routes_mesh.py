"""Mesh routes: devices (with live link state), peers, pairing, revocation, messages."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from kiana.api.deps import Rt, Runtime
from kiana.api.schemas_mesh import (
    AddressIn,
    AddressOut,
    InboxOut,
    InviteIn,
    InviteOut,
    LedgerOut,
    LedgerVerifyOut,
    MeshDevicesOut,
    MessageIn,
    MessageOut,
    PairingStateOut,
    PeersOut,
    PingOut,
    RevokeOut,
    SyncStatusOut,
)
from kiana.errors import InputError, MeshError
from kiana.mesh.service import MeshService
from kiana.store import Device

router = APIRouter(tags=["mesh"])

DeviceId = Annotated[str, Path(pattern=r"^[a-z2-7]{4}(-[a-z2-7]{4}){3}$")]


def _mesh(rt: Runtime) -> MeshService:
    if rt.mesh is None:
        raise MeshError("the mesh is not running on this node (mesh.enabled = false)")
    return rt.mesh


def device_view(d: Device, live: dict[str, dict[str, Any]]) -> dict[str, Any]:
    peer = live.get(d.device_id, {})
    return {
        "device_id": d.device_id,
        "name": d.name,
        "role": d.role,
        "person": d.person,
        "added": d.added,
        "sign_key": d.sign_key.hex(),
        "box_key": d.box_key.hex(),
        "revoked": d.revoked,
        "last_seen": d.last_seen,
        "state": peer.get("state"),
        "link": peer.get("link"),
        "rtt_ms": peer.get("rtt_ms"),
    }


@router.get(
    "/devices",
    summary="Devices of this mind with role, person, last seen, link type and RTT",
    response_model=MeshDevicesOut,
)
async def devices(rt: Rt) -> dict[str, Any]:
    found = await rt.off.read(rt.node.store.devices)
    live = {p["device"]: p for p in rt.mesh.peer_status()} if rt.mesh is not None else {}
    return {"this_device": rt.node.device_id, "devices": [device_view(d, live) for d in found]}


@router.post(
    "/devices/{device_id}/revoke",
    summary="Revoke a lost device: it can no longer connect; its old blocks stay verifiable",
    response_model=RevokeOut,
)
async def revoke(rt: Rt, device_id: DeviceId) -> dict[str, Any]:
    from kiana.mesh.enroll import revoke_device

    record = await rt.off.write(revoke_device, rt.node, device_id)
    if rt.mesh is not None:
        await rt.mesh.announce_revocation(device_id)
    return {"device_id": device_id, "revoked": record.created}


@router.get(
    "/mesh/peers", summary="Live links: direct/relayed, health, RTT", response_model=PeersOut
)
async def peers(rt: Rt) -> dict[str, Any]:
    mesh = _mesh(rt)
    return {"port": mesh.port, "peers": mesh.peer_status()}


@router.post(
    "/mesh/peers",
    summary="Add a peer address (host:port) for networks without multicast",
    response_model=AddressOut,
    status_code=201,
)
async def add_peer(rt: Rt, body: AddressIn) -> dict[str, Any]:
    address = await _mesh(rt).add_address(body.address)
    return {"address": address}


@router.post(
    "/mesh/pairing",
    summary="Create a one-time pairing code for a new device",
    response_model=InviteOut,
    status_code=201,
)
async def invite(rt: Rt, body: InviteIn) -> dict[str, Any]:
    inv = await _mesh(rt).pairing.invite(ttl_s=body.ttl_s, role=body.role)
    return inv.as_dict()


@router.get(
    "/mesh/pairing/{nameplate}",
    summary="State of a pairing code: waiting, joined, failed or expired",
    response_model=PairingStateOut,
)
async def pairing_state(rt: Rt, nameplate: Annotated[int, Path(ge=1, le=999)]) -> dict[str, Any]:
    return _mesh(rt).pairing.state(nameplate)


@router.post(
    "/mesh/messages",
    summary="Queue an end-to-end encrypted message for a device (durable until acknowledged)",
    response_model=MessageOut,
    status_code=202,
)
async def send_message(rt: Rt, body: MessageIn) -> dict[str, Any]:
    mesh = _mesh(rt)
    if not body.channel.startswith("app."):
        raise InputError("applications may only use channels named app.*")
    msg_id = await mesh.send(
        body.to,
        body.channel,
        body.text.encode(),
        ttl_ms=None if body.ttl_s is None else body.ttl_s * 1000,
        ordered=body.ordered,
    )
    return {"id": msg_id}


@router.get(
    "/mesh/inbox",
    summary="Messages received on app.* channels and not yet consumed",
    response_model=InboxOut,
)
async def inbox(
    rt: Rt,
    channel: Annotated[str | None, Query(max_length=64)] = None,
    consume: bool = False,
) -> dict[str, Any]:
    mesh = _mesh(rt)
    items = await mesh.inbox(channel=channel, consume=consume)
    return {
        "messages": [
            {
                "id": m.msg_id,
                "sender": m.sender,
                "channel": m.channel,
                "seq": m.seq,
                "created": m.created,
                "text": m.body.decode("utf-8", "replace"),
                "body_b64": base64.b64encode(m.body).decode(),
            }
            for m in items
        ]
    }


@router.post(
    "/mesh/ping/{device_id}",
    summary="End-to-end round trip to a device through the mesh",
    response_model=PingOut,
)
async def ping(rt: Rt, device_id: DeviceId) -> dict[str, Any]:
    rtt = await _mesh(rt).ping(device_id)
    return {"device_id": device_id, "rtt_ms": rtt}


@router.get(
    "/sync/status",
    summary="Memory sync per peer: in sync or behind by N, last exchange, bytes, rejections",
    response_model=SyncStatusOut,
)
async def sync_status(rt: Rt) -> dict[str, Any]:
    mesh = _mesh(rt)
    peers = await mesh.sync_status()
    return peers


@router.get(
    "/ledger",
    summary="The newest sealed blocks of the mind's ledger with their records",
    response_model=LedgerOut,
)
async def ledger_blocks(
    rt: Rt, limit: Annotated[int, Query(ge=1, le=10_000)] = 50
) -> dict[str, Any]:
    from kiana.ledger.audit import describe

    blocks = await rt.off.read(describe, rt.node.store.db, limit=limit)
    return {"blocks": blocks}


@router.get(
    "/ledger/verify",
    summary="Verify the stored chain from the genesis (the first bad link if there is one),"
    " then check its commit records against this device's blocks",
    response_model=LedgerVerifyOut,
)
async def ledger_verify(rt: Rt) -> dict[str, Any]:
    from kiana.ledger.audit import FINDINGS_LIMIT, audit_json, audit_stored

    audit = await rt.off.read(audit_stored, rt.node.store.db, rt.node.genesis)
    return audit_json(audit, limit=FINDINGS_LIMIT)
