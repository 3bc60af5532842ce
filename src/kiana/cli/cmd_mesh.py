"""pair, join, devices [revoke], peers [add, ping]: the mesh from the command line.

Live state lives in the running node (``kiana serve``); these commands ask it over
the HTTP API when it runs. ``kiana pair`` without a running node opens the mesh
listener itself for the life of the code.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click
from rich.table import Table

from kiana.cli.context import CliState, err, fmt_time, json_option, out, pass_state, print_json
from kiana.cli.remote import Remote, running_node
from kiana.errors import InputError, MeshError


def _qr(text: str) -> str:
    import segno

    qr = segno.make(text, error="m")
    rows = []
    matrix = [[bool(c) for c in row] for row in qr.matrix]
    border = 2
    size = len(matrix)
    pad = [[False] * (size + 2 * border) for _ in range(border)]
    full = pad + [[False] * border + r + [False] * border for r in matrix] + pad
    if len(full) % 2:
        full.append([False] * (size + 2 * border))
    # Two modules per character: upper and lower half blocks, dark on light.
    for top, bottom in zip(full[::2], full[1::2], strict=True):
        line = ""
        for a, b in zip(top, bottom, strict=True):
            line += {(False, False): "█", (True, False): "▄", (False, True): "▀"}.get((a, b), " ")
        rows.append(line)
    return "\n".join(rows)


def _print_invite(info: dict[str, Any], *, qr: bool) -> None:
    minutes = max(1, round((info["expires"] - time.time() * 1000) / 60_000))
    out.print(f"Pairing code: [bold]{info['code']}[/bold]  (valid {minutes} min, single use)")
    out.print(f"On the new device run:  kiana join {info['code']}")
    out.print(f"(no multicast on this network?  add --address <this-host>:{info['port']})")
    if qr:
        out.print(_qr(f"kiana:join:{info['code']}"))


@click.command()
@click.option(
    "--ttl", "ttl_s", type=click.IntRange(10, 3600), default=None, help="Code lifetime (s)."
)
@click.option(
    "--role", type=click.Choice(["member", "authority"]), default="member", show_default=True
)
@click.option("--no-qr", is_flag=True, help="Do not draw the QR code.")
@json_option
@pass_state
def pair(state: CliState, ttl_s: int | None, role: str, no_qr: bool, as_json: bool) -> None:
    """Invite a new device: print a one-time code (and QR) and wait until it joins."""
    settings = state.settings
    remote = running_node(settings)
    if remote is not None:
        info = remote.call("POST", "/api/v1/mesh/pairing", {"ttl_s": ttl_s, "role": role})
        _announce(info, as_json=as_json, qr=not no_qr)
        result = _poll_remote(remote, info)
    else:
        result = asyncio.run(_pair_locally(state, ttl_s, role, as_json=as_json, qr=not no_qr))
    _finish(result, as_json=as_json)


def _announce(info: dict[str, Any], *, as_json: bool, qr: bool) -> None:
    if as_json:
        # One line, flushed: a script reads the code while the command keeps waiting.
        click.echo(json.dumps(info))
    else:
        _print_invite(info, qr=qr)
        err.print("waiting for the new device… (Ctrl-C to cancel)")


def _poll_remote(remote: Remote, info: dict[str, Any]) -> dict[str, Any]:
    while True:
        result: dict[str, Any] = remote.call("GET", f"/api/v1/mesh/pairing/{info['nameplate']}")
        if result["state"] != "waiting":
            return result
        time.sleep(0.3)


async def _pair_locally(
    state: CliState, ttl_s: int | None, role: str, *, as_json: bool, qr: bool
) -> dict[str, Any]:
    from kiana.mesh.service import MeshService
    from kiana.node import Node

    node = await asyncio.to_thread(Node.open, state.settings)
    mesh = MeshService(node, state.settings)
    try:
        await mesh.start()
        inv = await mesh.pairing.invite(ttl_s=ttl_s, role=role)
        _announce(inv.as_dict(), as_json=as_json, qr=qr)
        return await mesh.pairing.wait(inv.nameplate)
    finally:
        await mesh.stop()
        await asyncio.to_thread(node.close)


def _finish(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
    if result["state"] == "joined":
        if not as_json:
            out.print(
                f"Device [bold]{result.get('name') or ''}[/bold] ({result['device']}) joined."
            )
        return
    raise MeshError(
        "pairing failed: " + (result.get("error") or result["state"])
        if result["state"] == "failed"
        else "the pairing code expired before a device joined; run 'kiana pair' again"
    )


@click.command()
@click.argument("code")
@click.option("--address", default=None, help="host:port of the inviting device (skips mDNS).")
@click.option("--name", "device_name", default="", help="Name of this device (default: hostname).")
@click.option(
    "--as-new-person",
    "new_person",
    default="",
    metavar="NAME",
    help="Join as a new person of the mind (own private memory), not as the inviter's device.",
)
@click.option("--timeout", "timeout_s", type=float, default=20.0, show_default=True)
@json_option
@pass_state
def join(
    state: CliState,
    code: str,
    address: str | None,
    device_name: str,
    new_person: str,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Join a mind with the code shown by 'kiana pair' on one of its devices."""
    from kiana.mesh.pairing_service import join_mind

    result = asyncio.run(
        join_mind(
            state.settings,
            code,
            address=address,
            name=device_name,
            new_person=new_person,
            timeout_s=timeout_s,
        )
    )
    if as_json:
        print_json(result)
        return
    out.print(f"Joined mind [bold]{result['mind_name']}[/bold] ({result['mind']})")
    out.print(
        f"This device: [bold]{result['device']}[/bold] ({result['role']}, {result['person']})"
    )
    out.print("Next: kiana serve   (links to the other devices start by themselves)")


def _device_rows(state: CliState) -> dict[str, Any]:
    remote = running_node(state.settings)
    if remote is not None:
        data: dict[str, Any] = remote.call("GET", "/api/v1/devices")
        data["live"] = True
        return data
    from kiana.api.routes_mesh import device_view

    with state.node() as node:
        devices = node.store.devices()
        me = node.device_id
    return {"this_device": me, "devices": [device_view(d, {}) for d in devices], "live": False}


@click.group(invoke_without_command=True)
@json_option
@pass_state
@click.pass_context
def devices(ctx: click.Context, state: CliState, as_json: bool) -> None:
    """List this mind's devices: role, person, last seen, link, RTT."""
    if ctx.invoked_subcommand is not None:
        return
    data = _device_rows(state)
    if as_json:
        print_json(data)
        return
    table = Table()
    for col in ("device", "name", "role", "person", "last seen", "link", "RTT"):
        table.add_column(col)
    for d in data["devices"]:
        name = d["name"] + (" (this device)" if d["device_id"] == data["this_device"] else "")
        link = "[red]revoked[/red]" if d["revoked"] else d["link"] or (d["state"] or "-")
        rtt = f"{d['rtt_ms']:.1f} ms" if d["rtt_ms"] is not None else "-"
        seen = fmt_time(d["last_seen"]) if d["last_seen"] else "-"
        table.add_row(d["device_id"], name, d["role"], d["person"], seen, link, rtt)
    out.print(table)
    if not data["live"]:
        err.print("(kiana serve is not running: no live link state)")


@devices.command("revoke")
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def devices_revoke(state: CliState, device_id: str, yes: bool) -> None:
    """Cut a lost device off: it can no longer connect or sync."""
    if not yes:
        click.confirm(f"Revoke device {device_id}? It will be cut off from the mind", abort=True)
    remote = running_node(state.settings)
    if remote is not None:
        remote.call("POST", f"/api/v1/devices/{device_id}/revoke")
    else:
        from kiana.mesh.enroll import revoke_device

        with state.node() as node:
            revoke_device(node, device_id)
        err.print("(the other devices learn of it when this device next connects)")
    out.print(f"Revoked {device_id}.")


@click.group(invoke_without_command=True)
@json_option
@pass_state
@click.pass_context
def peers(ctx: click.Context, state: CliState, as_json: bool) -> None:
    """Show live links: direct or relayed, health state, RTT (needs kiana serve)."""
    if ctx.invoked_subcommand is not None:
        return
    data = _need_remote(state).call("GET", "/api/v1/mesh/peers")
    if as_json:
        print_json(data)
        return
    table = Table()
    for col in ("device", "name", "state", "link", "remote", "RTT", "in/out"):
        table.add_column(col)
    for p in data["peers"]:
        rtt = f"{p['rtt_ms']:.1f} ms" if p["rtt_ms"] is not None else "-"
        inout = f"{p['bytes_in']}/{p['bytes_out']} B"
        table.add_row(
            p["device"], p["name"], p["state"], p["link"] or "-", p["remote"] or "-", rtt, inout
        )
    out.print(table)
    if not data["peers"]:
        err.print("no peers known yet (mDNS finds devices on this LAN; else: kiana peers add)")


def _need_remote(state: CliState) -> Remote:
    remote = running_node(state.settings)
    if remote is None:
        raise MeshError("kiana serve is not running for this home; start it first")
    return remote


@peers.command("add")
@click.argument("address")
@pass_state
def peers_add(state: CliState, address: str) -> None:
    """Remember a peer's host:port for networks without multicast."""
    remote = running_node(state.settings)
    if remote is not None:
        result = remote.call("POST", "/api/v1/mesh/peers", {"address": address})
        out.print(f"Added {result['address']}; connecting.")
        return
    from kiana.mesh.tcp import format_address, parse_address

    try:
        host, port = parse_address(address, state.settings.mesh_port)
    except ValueError as exc:
        raise InputError(f"not a host:port address: {address!r}") from exc
    text = format_address(host, port)
    with state.node() as node:
        node.store.db.write(
            lambda c: c.execute(
                "INSERT INTO mesh_addresses (address, device_id, source, added)"
                " VALUES (?, '', 'manual', ?) ON CONFLICT (address) DO NOTHING",
                (text, int(time.time() * 1000)),
            )
        )
    out.print(f"Added {text}; kiana serve will connect to it.")


@peers.command("ping")
@click.argument("device_id")
@pass_state
def peers_ping(state: CliState, device_id: str) -> None:
    """End-to-end round trip to a device (sealed message and its answer)."""
    result = _need_remote(state).call("POST", f"/api/v1/mesh/ping/{device_id}")
    out.print(f"{device_id}: {result['rtt_ms']:.1f} ms")


COMMANDS = (pair, join, devices, peers)
