"""ask, chat, models, reindex: the assistant in the terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from kiana.assistant.engine import Answer, Assistant, Citation, Delta, Learned, Sources
from kiana.assistant.intents import remember_intent
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
from kiana.cli.render import block_json, one_line
from kiana.errors import KianaError
from kiana.llm.base import GenerationOptions
from kiana.node import Node


def _warm_up(assistant: Assistant) -> None:
    """Load (and on first use assemble and check) the embedded model behind a progress bar."""
    load = getattr(assistant.model, "load", None)
    if load is None or getattr(assistant.model, "loaded", True):
        return
    with progress_bar(transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)

        load(progress)


def _assistant(node: Node, max_tokens: int | None) -> Assistant:
    from kiana.assistant.factory import build_assistant

    assistant = build_assistant(node)
    if max_tokens is not None:
        assistant.options = GenerationOptions(max_tokens=max_tokens)
    _warm_up(assistant)
    return assistant


def _citation_json(c: Citation) -> dict[str, Any]:
    p = c.provenance
    return {
        "n": c.n,
        "block": block_json(c.block),
        "author": p.author,
        "author_name": p.author_name,
        "created": p.created,
        "valid": p.valid,
    }


def _print_citations(citations: list[Citation]) -> None:
    for c in citations:
        p = c.provenance
        mark = "[green]✓ signed[/green]" if p.valid else f"[red]✗ {p.error}[/red]"
        out.print(
            f"  [bold][{c.n}][/bold] {escape(one_line(c.block.body, 100))}\n"
            f"      {c.block.id[:12]} · {escape(p.author_name)} ({p.author}) · {fmt_time(p.created)} · {mark}"
        )


def _run_turn(events: Iterator[Any], *, as_json: bool) -> Answer | None:
    """Stream one turn to the terminal; return the final answer."""
    answer: Answer | None = None
    sources: list[Any] = []
    learned: list[Any] = []
    for event in events:
        if isinstance(event, Sources):
            sources = event.items
        elif isinstance(event, Delta) and not as_json:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Learned):
            learned.append(event)
        elif isinstance(event, Answer):
            answer = event
    if answer is None:
        return None
    if as_json:
        print_json(
            {
                "answer": answer.text,
                "conversation_id": answer.conversation_id,
                "cancelled": answer.cancelled,
                "citations": [_citation_json(c) for c in answer.citations],
                "sources": [
                    {"id": s.block.id, "score": s.score, "via": list(s.via)} for s in sources
                ],
                "learned": [block_json(e.block) for e in learned],
            }
        )
        return answer
    sys.stdout.write("\n")
    if answer.citations:
        _print_citations(answer.citations)
    elif sources and not learned:
        err.print("[dim](no memory block cited)[/dim]")
    return answer


@click.command()
@click.argument("question", nargs=-1, required=True)
@click.option("--conversation", "-c", default=None, help="Continue this conversation (id).")
@click.option("--no-memory", is_flag=True, help="Answer without retrieving memory.")
@click.option("--max-tokens", type=click.IntRange(1, 8192), default=None, help="Longest answer.")
@json_option
@pass_state
def ask(
    state: CliState,
    question: tuple[str, ...],
    conversation: str | None,
    no_memory: bool,
    max_tokens: int | None,
    as_json: bool,
) -> None:
    """Ask a question; the answer streams and cites signed memory blocks."""
    with state.node() as node:
        assistant = _assistant(node, max_tokens)
        cancel = threading.Event()
        try:
            events = assistant.ask(
                " ".join(question),
                conversation_id=conversation,
                use_memory=not no_memory,
                cancel=cancel,
            )
            _run_turn(events, as_json=as_json)
        finally:
            assistant.model.close()


@click.command()
@click.option("--conversation", "-c", default=None, help="Continue this conversation (id).")
@click.option("--max-tokens", type=click.IntRange(1, 8192), default=None)
@click.option(
    "--extract",
    is_flag=True,
    help="After each message, propose facts from it and ask before storing each one.",
)
@pass_state
def chat(state: CliState, conversation: str | None, max_tokens: int | None, extract: bool) -> None:
    """A conversation that remembers. "remember that ..." stores a fact.

    Ctrl-C stops an answer; Ctrl-D or /quit leaves; /new starts a new conversation.
    """
    with state.node() as node:
        assistant = _assistant(node, max_tokens)
        err.print("KI_ana chat. Ctrl-C stops an answer, Ctrl-D or /quit leaves, /new starts over.")
        try:
            while True:
                try:
                    line = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
                except (EOFError, click.exceptions.Abort):
                    err.print()
                    return
                text = line.strip()
                if not text:
                    continue
                if text in {"/quit", "/exit"}:
                    return
                if text == "/new":
                    conversation = None
                    err.print("[dim]new conversation[/dim]")
                    continue
                cancel = threading.Event()
                out.print("[bold]kiana>[/bold] ", end="")
                try:
                    answer = _run_turn(
                        assistant.ask(text, conversation_id=conversation, cancel=cancel),
                        as_json=False,
                    )
                except KeyboardInterrupt:
                    cancel.set()
                    err.print("\n[dim](stopped)[/dim]")
                    continue
                if answer is not None:
                    conversation = answer.conversation_id
                if extract and answer is not None and remember_intent(text) is None:
                    _offer_facts(node, assistant, text)
        finally:
            assistant.model.close()


def _offer_facts(node: Node, assistant: Assistant, text: str) -> None:
    """Propose facts from the user's message; store each one only if the user agrees."""
    from kiana.assistant.extraction import propose_facts

    for fact in propose_facts(assistant.model, text):
        try:
            agreed = click.confirm(f"  remember: {fact!r}?", default=False, err=True)
        except click.exceptions.Abort:  # end of input: store nothing more
            return
        if agreed:
            result = node.remember(fact)
            err.print(f"  [green]remembered[/green] {result.block.id[:12]}")


@click.command()
@json_option
@pass_state
def models(state: CliState, as_json: bool) -> None:
    """Which chat and embedding models are configured and available."""
    from kiana.llm.factory import list_models

    settings = state.settings
    infos = list_models(settings)
    embedding: dict[str, Any] | None = None
    embedding_error = ""
    with state.node() as node:
        try:
            embedding = node.vectors.status()
        except KianaError as exc:  # shown in the table, not hidden
            embedding_error = exc.message
    if as_json:
        print_json(
            {
                "chat": [{s: getattr(i, s) for s in i.__slots__} for i in infos],
                "embeddings": embedding or {"error": embedding_error},
            }
        )
        return
    table = Table("", "chat model", "backend", "available", "detail", title="Chat")
    for i in infos:
        table.add_row(
            "→" if getattr(i, "selected", False) else "",
            escape(i.name),
            i.backend,
            "[green]yes[/green]" if i.available else "[red]no[/red]",
            escape(i.detail),
        )
    out.print(table)
    if embedding is None:
        out.print(f"Embeddings: [red]unavailable[/red]: {escape(embedding_error)}")
        return
    out.print(
        f"Embeddings: {embedding['model']} ({embedding['dim']} dims, {embedding['runtime']}) · "
        f"index {embedding['backend']} · {embedding['vectors']} vectors, {embedding['missing']} missing"
    )
    if embedding["missing"]:
        out.print("Run [bold]kiana reindex[/bold] to embed the missing blocks.")


@click.command()
@json_option
@pass_state
def reindex(state: CliState, as_json: bool) -> None:
    """Embed every block that lacks a vector of the configured model (after changing it)."""
    with state.node() as node:
        vectors = node.vectors
        missing = vectors.status()["missing"]
        with progress_bar() as bar:
            task = bar.add_task("embedding", total=missing)
            report = vectors.reindex(progress=lambda n: bar.advance(task, n))
    if as_json:
        print_json({s: getattr(report, s) for s in report.__slots__})
    else:
        out.print(
            f"Embedded {report.embedded} block(s) with {report.model} in {report.seconds:.1f} s"
        )


COMMANDS = (ask, chat, models, reindex)
