"""init, status, config show, serve, open."""

from __future__ import annotations

import webbrowser

import click
from rich.table import Table

from kiana.cli.context import CliState, err, fmt_time, json_option, out, pass_state, print_json
from kiana.cli.remote import RemoteError, running_node
from kiana.config import SETTINGS, redact_url
from kiana.home import HomeLayout, load_identity, read_token
from kiana.node import Node


@click.command()
@click.option(
    "--name", "mind_name", default="My mind", show_default=True, help="Name of the new mind."
)
@click.option("--device-name", default="", help="Name of this device (default: hostname).")
@json_option
@pass_state
def init(state: CliState, mind_name: str, device_name: str, as_json: bool) -> None:
    """Create the data dir, this device's keys and a new mind."""
    with Node.init(state.settings, mind_name=mind_name, device_name=device_name) as node:
        info = {
            "home": str(state.settings.home),
            "mind": node.mind_id,
            "device": node.device_id,
            "token_file": str(HomeLayout(state.settings.home).token),
        }
    if as_json:
        print_json(info)
        return
    out.print(f"Created mind [bold]{mind_name}[/bold] ({info['mind']}) in {info['home']}")
    out.print(f"This device: [bold]{info['device']}[/bold] (authority)")
    out.print(f"API token: {info['token_file']}")
    out.print('Next: kiana remember "..."  ·  kiana add notes/*.md  ·  kiana serve')


@click.command()
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show the mind, this device and what is stored."""
    with state.node() as node:
        info = node.status()
    if as_json:
        print_json(info)
        return
    table = Table(show_header=False, box=None)
    table.add_row("mind", f"{info['mind']['name']} ({info['mind']['id']})")
    table.add_row("created", fmt_time(info["mind"]["created"]))
    table.add_row("device", f"{info['device']['name']} ({info['device']['id']})")
    storage = info["storage"]
    table.add_row(
        "storage",
        f"{storage['backend']} · {storage['location']} · schema v{storage['schema_version']}",
    )
    blocks = info["blocks"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(blocks["by_kind"].items())) or "none"
    table.add_row("blocks", f"{blocks['total']} ({kinds})")
    table.add_row("erased", f"{blocks['erased']} blocks, {blocks['tombstones']} tombstones")
    table.add_row("devices", str(info["devices"]))
    out.print(table)


@click.group()
def config() -> None:
    """Inspect configuration."""


@config.command("show")
@json_option
@pass_state
def config_show(state: CliState, as_json: bool) -> None:
    """Show every setting, its value and where it came from."""
    settings = state.settings
    rows = [
        {
            "setting": f"{spec.section}.{spec.key}",
            "value": _shown(spec.name, getattr(settings, spec.name)),
            "source": settings.sources.get(spec.name, "default"),
            "env": spec.env,
        }
        for spec in SETTINGS
    ]
    if as_json:
        print_json(
            {"home": str(settings.home), "config_file": str(settings.config_path), "settings": rows}
        )
        return
    out.print(f"home: {settings.home}\nconfig file: {settings.config_path}")
    table = Table("setting", "value", "source", "env")
    for row in rows:
        table.add_row(str(row["setting"]), repr(row["value"]), str(row["source"]), str(row["env"]))
    out.print(table)


def _shown(name: str, value: object) -> object:
    if name == "chat_api_key" and value:
        return "***"
    return (
        redact_url(value)
        if name in {"database_url", "chat_url", "qdrant_url"} and isinstance(value, str)
        else value
    )


@click.command()
@click.option("--host", default=None, help="Bind address (default from api.host: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from api.port: 8765).")
@pass_state
def serve(state: CliState, host: str | None, port: int | None) -> None:
    """Run the HTTP API (default http://127.0.0.1:8765)."""
    from kiana.api.serve import check_bind
    from kiana.api.serve import serve as run_server

    state.overrides.update({"api_host": host, "api_port": port})
    state._settings = None
    settings = state.settings
    # Fail with one clear line before announcing a server that will not start.
    load_identity(settings)
    check_bind(settings.api_host, settings.api_require_token)
    if settings.api_require_token:
        read_token(settings)
    base = f"http://{settings.api_host}:{settings.api_port}"
    click.echo(f"KI_ana API on {base}  (docs: /docs)", err=True)
    click.echo(f"Dashboard: {base}/", err=True)

    def print_link(path: str, ttl_s: float) -> None:
        click.echo(
            f"Log in: {base}{path}\n"
            f"  (one-time link, valid for {ttl_s:g} s; kiana open makes a new one)",
            err=True,
        )

    run_server(settings, on_started=print_link)


@click.command("open")
@click.option("--no-browser", is_flag=True, help="Only print the link; do not start a browser.")
@json_option
@pass_state
def open_dashboard(state: CliState, no_browser: bool, as_json: bool) -> None:
    """Open the dashboard, logged in, with a one-time link (needs kiana serve)."""
    load_identity(state.settings)  # "run 'kiana init' first" before anything else
    remote = running_node(state.settings)
    if remote is None:
        raise RemoteError("kiana serve is not running for this home; start it first", "not_running")
    link = remote.call("POST", "/api/v1/auth/link")
    url = remote.base + link["path"]
    opened = False if no_browser else webbrowser.open(url)
    if as_json:
        print_json({"url": url, "expires_in_s": link["expires_in_s"], "browser": opened})
        return
    out.print(url)
    if not no_browser and not opened:
        err.print("No browser could be started: open the link above yourself.")
    err.print(f"(works once, for {link['expires_in_s']:g} s)")


COMMANDS = (init, status, config, serve, open_dashboard)
