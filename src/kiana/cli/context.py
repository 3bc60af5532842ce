"""Shared CLI plumbing: settings, opening the node, output and error mapping."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from kiana.config import Settings, load_settings
from kiana.errors import BlockError, ConfigError, HomeError, KianaError, NotFoundError
from kiana.node import Node

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    home: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.home, **self.overrides)
        return self._settings

    @contextmanager
    def node(self) -> Iterator[Node]:
        node = Node.open(self.settings)
        try:
            yield node
        finally:
            node.close()


pass_state = click.make_pass_decorator(CliState, ensure=True)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def fmt_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M")


def progress_bar(*, transient: bool = False) -> Progress:
    """A progress bar on stderr; hidden automatically when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=not sys.stderr.isatty(),
    )


class KianaGroup(click.Group):
    """Turns every ``KianaError`` into one clear line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KianaError as exc:
            err.print(Text.assemble(("error: ", "red"), exc.message))
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            err.print("interrupted")
            ctx.exit(130)


def exit_code_for(exc: KianaError) -> int:
    """1: general failure, 2: configuration or home, 3: invalid block, 4: not found."""
    if isinstance(exc, NotFoundError):
        return 4
    if isinstance(exc, BlockError):
        return 3
    if isinstance(exc, ConfigError | HomeError):
        return 2
    return 1
