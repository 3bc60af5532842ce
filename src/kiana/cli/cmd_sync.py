"""sync status: how this device's memory compares with each peer's (needs kiana serve)."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from kiana.cli.cmd_mesh import _need_remote
from kiana.cli.context import CliState, err, fmt_time, json_option, out, pass_state, print_json


@click.group()
def sync() -> None:
    """Memory sync between this mind's devices."""


@sync.command("status")
@json_option
@pass_state
def sync_status(state: CliState, as_json: bool) -> None:
    """Per peer: in sync or behind by N, last exchange, bytes, rejected records."""
    data: dict[str, Any] = _need_remote(state).call("GET", "/api/v1/sync/status")
    if as_json:
        print_json(data)
        return
    table = Table()
    for col in ("device", "name", "state", "last exchange", "received/sent", "in/out", "rejected"):
        table.add_column(col)
    for p in data["peers"]:
        if p["in_sync"]:
            st = "[green]in sync[/green]"
        elif p["behind"]:
            st = f"[yellow]behind by {p['behind']}[/yellow]"
        else:
            st = "syncing" if p["up"] else "offline"
        seen = fmt_time(p["last_exchange"]) if p["last_exchange"] else "-"
        table.add_row(
            p["device"], p["name"], st, seen, f"{p['received']}/{p['sent']}",
            f"{p['bytes_in']}/{p['bytes_out']} B", str(p["rejected"]),
        )  # fmt: skip
    out.print(f"{data['items']} blocks and tombstones on this device")
    out.print(table)
    if not data["peers"]:
        err.print("no peers yet: pair a device with 'kiana pair'")


COMMANDS = (sync,)
