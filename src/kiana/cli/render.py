"""How blocks and hits look in the terminal and in ``--json`` output."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from kiana.blocks import Block, Tombstone
from kiana.cli.context import fmt_time


def block_json(block: Block) -> dict[str, Any]:
    return block.to_dict()


def tombstone_json(tomb: Tombstone) -> dict[str, Any]:
    return tomb.to_dict()


def one_line(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def blocks_table(blocks: list[Block], *, scores: list[float] | None = None) -> Table:
    table = Table("id", "kind", "created", "tags", "text", show_lines=False)
    if scores is not None:
        table.add_column("score", justify="right")
    for i, block in enumerate(blocks):
        row = [
            block.id[:12],
            block.kind,
            fmt_time(block.created),
            escape(",".join(block.tags)),
            escape(
                one_line(block.meta.title + ": " + block.body if block.meta.title else block.body)
            ),
        ]
        if scores is not None:
            row.append(f"{scores[i]:.2f}")
        table.add_row(*row)
    return table
