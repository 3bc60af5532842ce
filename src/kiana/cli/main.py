"""Entry point: ``kiana [--home DIR] COMMAND``.

Exit codes: 0 ok, 1 failure, 2 configuration/home or usage error,
3 invalid block, 4 not found, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path

import click

from kiana import __version__
from kiana.cli import (
    cmd_assistant,
    cmd_blocks,
    cmd_memory,
    cmd_mesh,
    cmd_sync,
    cmd_system,
    cmd_transfer,
)
from kiana.cli.context import CliState, KianaGroup


@click.group(cls=KianaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="KIANA_HOME",
    help="Data directory (default ~/.kiana; env KIANA_HOME).",
)
@click.version_option(__version__, prog_name="kiana")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """KI_ana: a personal AI with a signed memory that lives on your own devices."""
    ctx.obj = CliState(home=home)


for module in (cmd_system, cmd_memory, cmd_blocks, cmd_transfer, cmd_assistant, cmd_mesh, cmd_sync):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="kiana")


if __name__ == "__main__":
    main()
