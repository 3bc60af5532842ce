"""blocks list / show / verify."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from rich.markup import escape
from rich.table import Table

from kiana.blocks import KINDS, SCOPES
from kiana.cli.context import (
    CliState,
    err,
    fmt_time,
    json_option,
    out,
    pass_state,
    print_json,
    progress_bar,
)
from kiana.cli.render import block_json, blocks_table
from kiana.errors import InputError
from kiana.store import BlockFilter


def _when(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"{value!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


@click.group()
def blocks() -> None:
    """List, show and verify knowledge blocks."""


@blocks.command("list")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default=None)
@click.option("--scope", type=click.Choice(sorted(SCOPES)), default=None)
@click.option("--tag", default=None)
@click.option("--author", default=None, help="Device id of the author.")
@click.option("--since", default=None, help="Created at or after (YYYY-MM-DD[THH:MM]).")
@click.option("--until", default=None, help="Created before (YYYY-MM-DD[THH:MM]).")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", default=None, help="Continue after a previous page.")
@json_option
@pass_state
def list_blocks(
    state: CliState,
    kind: str | None,
    scope: str | None,
    tag: str | None,
    author: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List blocks, newest first."""
    flt = BlockFilter(
        kind=kind, scope=scope, tag=tag, author=author, since=_when(since), until=_when(until)
    )
    with state.node() as node:
        page = node.list_blocks(flt, limit=limit, cursor=cursor)
    if as_json:
        print_json({"items": [block_json(b) for b in page.items], "next_cursor": page.next_cursor})
        return
    if not page.items:
        out.print("No blocks.")
        return
    out.print(blocks_table(page.items))
    if page.next_cursor:
        out.print(f"more: kiana blocks list --cursor {page.next_cursor}")


@blocks.command("show")
@click.argument("block_id")
@json_option
@pass_state
def show(state: CliState, block_id: str, as_json: bool) -> None:
    """Show one block with who wrote it and whether it verifies."""
    with state.node() as node:
        block = node.get(block_id)
        prov = node.provenance(block.id)
    if as_json:
        print_json({"block": block_json(block), "provenance": _prov_json(prov)})
        return
    table = Table(show_header=False, box=None)
    table.add_row("id", block.id)
    table.add_row("kind", f"{block.kind} ({block.scope})")
    if block.meta.title:
        table.add_row("title", escape(block.meta.title))
    if block.tags:
        table.add_row("tags", escape(", ".join(block.tags)))
    if block.meta.source:
        table.add_row(
            "source",
            escape(block.meta.source)
            + (f" #{block.meta.seq}" if block.meta.seq is not None else ""),
        )
    table.add_row("author", f"{escape(prov.author_name)} ({block.author}, {prov.author_role})")
    table.add_row("created", fmt_time(block.created))
    for ref in block.refs:
        table.add_row(ref.rel, ref.id)
    table.add_row(
        "signature", "[green]valid[/green]" if prov.valid else f"[red]INVALID ({prov.error})[/red]"
    )
    out.print(table)
    out.print()
    out.print(escape(block.body))


def _prov_json(prov: object) -> dict[str, object]:
    return {s: getattr(prov, s) for s in getattr(prov, "__slots__", ())}


@blocks.command("verify")
@click.argument("block_id", required=False)
@json_option
@pass_state
def verify(state: CliState, block_id: str | None, as_json: bool) -> None:
    """Verify one block, or every block when no id is given."""
    with state.node() as node:
        if block_id:
            prov = node.provenance(block_id)
            if as_json:
                print_json(_prov_json(prov))
            elif prov.valid:
                out.print(
                    f"{prov.block_id[:12]}: valid, signed by {escape(prov.author_name)} ({prov.author})"
                )
            else:
                out.print(f"[red]{prov.block_id[:12]}: INVALID ({prov.error})[/red]")
            if not prov.valid:
                sys.exit(3)
            return
        total = node.store.stats().blocks
        with progress_bar() as bar:
            task = bar.add_task("verifying", total=total)
            report = node.verify_all(progress=lambda n: bar.advance(task, n))
    if as_json:
        print_json(
            {
                "checked": report.checked,
                "ok": report.ok,
                "failures": [{"id": i, "code": c, "message": m} for i, c, m in report.failures],
            }
        )
    else:
        out.print(f"Checked {report.checked} block(s): {len(report.failures)} failure(s)")
        for bid, code, message in report.failures:
            err.print(f"[red]{bid[:12]}[/red] {code}: {escape(message)}")
    if not report.ok:
        sys.exit(3)


COMMANDS = (blocks,)
