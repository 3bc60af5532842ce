"""export, import."""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from pathlib import Path

import click
from rich.markup import escape

from kiana.cli.context import CliState, err, json_option, out, pass_state, print_json, progress_bar
from kiana.errors import InputError
from kiana.transfer import export_lines, import_lines


@click.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File to write (default: standard output).",
)
@pass_state
def export_cmd(state: CliState, output: Path | None) -> None:
    """Write every block and tombstone as JSON Lines (kiana export > mind.jsonl)."""
    with state.node() as node:
        if output is None:
            for line in export_lines(node):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        tmp = output.with_name(output.name + ".part")
        count = 0
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                for line in export_lines(node):
                    fh.write(line + "\n")
                    count += 1
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(output)
        except BaseException as exc:
            with suppress(OSError):  # the original error is what matters
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise InputError(f"cannot write {output}: {exc.strerror or exc}") from exc
            raise
    err.print(f"Exported {count - 2} record(s) to {output}")


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--no-embed", is_flag=True, help="Skip embedding (fast); run 'kiana reindex' later.")
@json_option
@pass_state
def import_cmd(state: CliState, source: Path, no_embed: bool, as_json: bool) -> None:
    """Import a JSON Lines export (or - for standard input). Verified; safe to re-run."""
    with state.node() as node:
        if no_embed:
            node.auto_embed = False
        if str(source) == "-":
            report = import_lines(node, sys.stdin.buffer)
        else:
            try:
                size = source.stat().st_size
                fh = open(source, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise InputError(f"cannot read {source}: {exc.strerror}") from exc
            with fh, progress_bar() as bar:
                task = bar.add_task("importing", total=size)
                report = import_lines(node, fh, progress=lambda n: bar.advance(task, n))
    summary = {
        "stored": report.stored,
        "duplicates": report.duplicates,
        "refused_erased": report.refused_erased,
        "tombstones": report.tombstones,
        "errors": [{"line": n, "code": c, "message": m} for n, c, m in report.errors],
    }
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"Imported {report.stored} new block(s), {report.duplicates} already present, "
            f"{report.tombstones} tombstone(s), {report.refused_erased} refused as erased"
        )
        for n, code, message in report.errors[:20]:
            err.print(f"[red]line {n}[/red] {code}: {escape(message)}")
        if len(report.errors) > 20:
            err.print(f"... and {len(report.errors) - 20} more error(s)")
    if report.errors:
        sys.exit(3)


COMMANDS = (export_cmd, import_cmd)
