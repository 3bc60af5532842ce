"""sync status (needs kiana serve), ledger show|verify, pin, unpin, pins."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from kiana.cli.cmd_mesh import _need_remote
from kiana.cli.context import CliState, err, fmt_time, json_option, out, pass_state, print_json
from kiana.cli.remote import running_node


@click.group()
def sync() -> None:
    """Memory sync between this mind's devices."""


@sync.command("status")
@json_option
@pass_state
def sync_status(state: CliState, as_json: bool) -> None:
    """Per peer: in sync or behind by N, last exchange, bytes, rejected records and ops."""
    data: dict[str, Any] = _need_remote(state).call("GET", "/api/v1/sync/status")
    if as_json:
        print_json(data)
        return
    table = Table()
    for col in (
        "device",
        "name",
        "state",
        "last exchange",
        "received/sent",
        "in/out",
        "rejected",
        "refused ops",
    ):
        table.add_column(col)
    for p in data["peers"]:
        if p["in_sync"]:
            st = "[green]in sync[/green]"
        elif p.get("comparing"):
            st = "comparing" + (
                f", [yellow]behind by ≥ {p['behind']}[/yellow]" if p["behind"] else ""
            )
        elif p["behind"]:
            st = f"[yellow]behind by {p['behind']}[/yellow]"
        else:
            st = "syncing" if p["up"] else "offline"
        seen = fmt_time(p["last_exchange"]) if p["last_exchange"] else "-"
        table.add_row(
            p["device"], p["name"], st, seen, f"{p['received']}/{p['sent']}",
            f"{p['bytes_in']}/{p['bytes_out']} B", str(p["rejected"]),
            str(p.get("state_rejected", 0)),
        )  # fmt: skip
    out.print(f"{data['items']} blocks and tombstones on this device")
    out.print(table)
    if not data["peers"]:
        err.print("no peers yet: pair a device with 'kiana pair'")


@click.group()
def ledger() -> None:
    """The mind's ledger: the signed chain of what happened in this mind."""


@ledger.command("show")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@json_option
@pass_state
def ledger_show(state: CliState, limit: int, as_json: bool) -> None:
    """The newest sealed blocks of the ledger with their records."""
    from kiana.ledger.audit import describe

    with state.node() as node:
        blocks = describe(node.store.db, limit=limit)
    if as_json:
        print_json({"blocks": blocks})
        return
    if not blocks:
        out.print("The ledger has only its genesis block so far.")
        return
    for b in blocks:
        if "error" in b:
            out.print(f"[red]unreadable block: {b['reason']}[/red]")
            continue
        turn = "in turn" if b["in_turn"] else "out of turn"
        out.print(
            f"[bold]#{b['height']}[/bold] {b['hash'][:16]}…  {fmt_time(b['time'])}"
            f"  sealed by {b['signer']} ({turn})"
        )
        for r in b["records"]:
            subject = r.get("block") or r.get("device") or ""
            extra = f" {r['action']} {r['role']}" if r.get("action") else ""
            out.print(f"    {r['kind']:7} {str(subject)[:16]}{extra}")


@ledger.command("verify")
@json_option
@pass_state
def ledger_verify(state: CliState, as_json: bool) -> None:
    """Verify the whole chain from the genesis; point at the first bad link."""
    from kiana.ledger.audit import audit_json, audit_stored
    from kiana.ledger.errors import LedgerVerifyError

    with state.node() as node:
        audit = audit_stored(node.store.db, node.genesis)
    result, report = audit.chain, audit.commits
    info = audit_json(audit)
    if as_json:
        print_json(info)
    else:
        if result.ok:
            out.print(f"Ledger OK: {result.height} sealed blocks verified from the genesis.")
        out.print(
            f"Commit records: {report.checked} checked against this device's blocks,"
            f" {len(report.errors)} error(s), {len(report.warnings)} warning(s);"
            f" private records: {report.private_resolved} match this device's,"
            f" {report.private_opaque} not checkable here."
        )
        for f in report.findings[:50]:
            colour = "red" if f.level == "error" else "yellow"
            out.print(f"  [{colour}]{f.level}[/{colour}] {f.code}: {f.message}")
        if len(report.findings) > 50:
            out.print(f"  … and {len(report.findings) - 50} more (--json lists all)")
    if not result.ok:
        raise LedgerVerifyError(
            f"the ledger is broken at block {result.first_bad_height}: {result.reason}"
            f" (blocks up to {result.height} are good)"
        )
    if report.errors:
        raise LedgerVerifyError(
            f"the ledger commits {len(report.errors)} record(s) this device shows to be wrong"
            f" (first: {report.errors[0].message})"
        )


def _pin(state: CliState, block_id: str, pinned: bool) -> list[str]:
    remote = running_node(state.settings)
    if remote is not None:
        with state.node() as node:
            full = node.store.resolve_prefix(block_id)
        method = "PUT" if pinned else "DELETE"
        result: dict[str, Any] = remote.call(method, f"/api/v1/pins/{full}")
        return list(result["pins"])
    from kiana.sync.crdt import SharedState, SqlOpStore
    from kiana.sync.shared import set_pin

    with state.node() as node:
        full = node.store.resolve_prefix(block_id)
        if pinned:
            node.store.get(full)  # unknown or erased: a clear error
        shared = SharedState(
            node.device_id, signer=node.keys.signing, store=SqlOpStore(node.store.db)
        )
        return set_pin(shared, full, pinned)


@click.command()
@click.argument("block_id")
@pass_state
def pin(state: CliState, block_id: str) -> None:
    """Pin a block (on every device of the mind; merges without conflicts)."""
    pins = _pin(state, block_id, True)
    out.print(f"Pinned. {len(pins)} pinned block(s).")


@click.command()
@click.argument("block_id")
@pass_state
def unpin(state: CliState, block_id: str) -> None:
    """Unpin a block."""
    pins = _pin(state, block_id, False)
    out.print(f"Unpinned. {len(pins)} pinned block(s).")


@click.command()
@json_option
@pass_state
def pins(state: CliState, as_json: bool) -> None:
    """List pinned blocks."""
    remote = running_node(state.settings)
    if remote is not None:
        ids = list(remote.call("GET", "/api/v1/pins")["pins"])
    else:
        from kiana.sync.crdt import SharedState, SqlOpStore
        from kiana.sync.shared import PINS

        with state.node() as node:
            shared = SharedState(node.device_id, store=SqlOpStore(node.store.db))
            ids = sorted(shared.members(PINS))
    if as_json:
        print_json({"pins": ids})
        return
    for block_id in ids:
        out.print(block_id)
    if not ids:
        err.print("no pinned blocks")


COMMANDS = (sync, ledger, pin, unpin, pins)
