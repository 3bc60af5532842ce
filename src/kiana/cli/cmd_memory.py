"""remember, add, search, forget."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from kiana.blocks import KINDS, SCOPES
from kiana.cli.context import CliState, err, json_option, out, pass_state, print_json, progress_bar
from kiana.cli.render import block_json, blocks_table, tombstone_json
from kiana.store import BlockFilter

kind_choice = click.Choice(sorted(KINDS))
scope_choice = click.Choice(sorted(SCOPES))


@click.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--tag", "-t", "tags", multiple=True, help="Tag (repeatable).")
@click.option("--kind", type=kind_choice, default="fact", show_default=True)
@click.option(
    "--scope",
    type=scope_choice,
    default="shared",
    show_default=True,
    help="shared: every device of the mind; private: only your own devices.",
)
@click.option("--title", default="", help="Optional title.")
@click.option("--lang", default="", help="Language tag, e.g. en or de.")
@click.option("--supersedes", default=None, metavar="ID", help="Id of the block this one replaces.")
@json_option
@pass_state
def remember(
    state: CliState,
    text: tuple[str, ...],
    tags: tuple[str, ...],
    kind: str,
    scope: str,
    title: str,
    lang: str,
    supersedes: str | None,
    as_json: bool,
) -> None:
    """Store a fact (or note) as a signed knowledge block."""
    with state.node() as node:
        result = node.remember(
            " ".join(text),
            kind=kind,
            scope=scope,
            tags=tags,
            title=title,
            lang=lang,
            supersedes=supersedes,
        )
    if as_json:
        print_json({"created": result.created, "block": block_json(result.block)})
    elif result.created:
        out.print(f"Remembered [bold]{result.block.id[:12]}[/bold] ({kind}, {scope})")
    else:
        out.print(f"Already remembered as [bold]{result.block.id[:12]}[/bold]")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tag", "-t", "tags", multiple=True, help="Tag for every chunk (repeatable).")
@click.option("--scope", type=scope_choice, default="shared", show_default=True)
@click.option("--no-embed", is_flag=True, help="Skip embedding (fast); run 'kiana reindex' later.")
@json_option
@pass_state
def add(
    state: CliState,
    paths: tuple[Path, ...],
    tags: tuple[str, ...],
    scope: str,
    no_embed: bool,
    as_json: bool,
) -> None:
    """Chunk text files (Markdown, plain text) into blocks. Unchanged files are skipped."""
    with state.node() as node, progress_bar() as bar:
        if no_embed:
            node.auto_embed = False
        task = bar.add_task("adding files", total=len(paths))
        report = node.add_files(
            paths, tags=tags, scope=scope, progress=lambda n: bar.advance(task, n)
        )
    if as_json:
        print_json(
            {
                "files": report.files,
                "chunks_stored": report.chunks_stored,
                "chunks_skipped": report.chunks_skipped,
                "errors": [{"path": p, "message": m} for p, m in report.errors],
            }
        )
    else:
        out.print(
            f"Added {report.files} file(s): {report.chunks_stored} new chunk(s), "
            f"{report.chunks_skipped} unchanged"
        )
        for path, message in report.errors:
            err.print(f"[yellow]skipped[/yellow] {escape(path)}: {escape(message)}")
    if report.errors:
        sys.exit(1)


@click.command()
@click.argument("query", nargs=-1, required=True)
@click.option("--kind", type=kind_choice, default=None)
@click.option("--scope", type=scope_choice, default=None)
@click.option("--tag", default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=10, show_default=True)
@json_option
@pass_state
def search(
    state: CliState,
    query: tuple[str, ...],
    kind: str | None,
    scope: str | None,
    tag: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Keyword search over your memory (best matches first)."""
    with state.node() as node:
        hits = node.search(
            " ".join(query), BlockFilter(kind=kind, scope=scope, tag=tag), limit=limit
        )
    if as_json:
        print_json([{"score": h.score, "block": block_json(h.block)} for h in hits])
        return
    if not hits:
        out.print("No matches.")
        return
    out.print(blocks_table([h.block for h in hits], scores=[h.score for h in hits]))


@click.command()
@click.argument("block_id")
@click.option("--reason", default="", help="Why (kept in the signed tombstone; no content).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def forget(state: CliState, block_id: str, reason: str, yes: bool, as_json: bool) -> None:
    """Erase a block's content; a signed tombstone records the erasure."""
    with state.node() as node:
        full = node.store.resolve_prefix(block_id)
        if not yes and sys.stdin.isatty():
            click.confirm(f"Erase the content of block {full[:12]} for good?", abort=True)
        tomb = node.forget(full, reason=reason)
    if as_json:
        print_json(tombstone_json(tomb))
    else:
        out.print(f"Erased {full[:12]}; tombstone {tomb.id[:12]}")


COMMANDS = (remember, add, search, forget)
