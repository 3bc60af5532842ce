"""Export a mind to JSON Lines and import it back, verified and idempotent.

Format (one JSON object per line, documented in docs/block-format.md)::

    {"type": "kiana-export", "version": 1, "mind": "mind-…", "exported": 1700000000000}
    {"type": "genesis", "record": {...}}
    {"type": "block", "record": {...signed block...}}
    {"type": "tombstone", "record": {...signed tombstone...}}

Import verifies every record before it is stored and commits in batches, so
a crash (even ``kill -9``) leaves only whole batches; running the same
import again completes it without duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kiana.blocks import Block, parse_block, parse_tombstone, verify_block, verify_tombstone
from kiana.blocks.codec import loads_record
from kiana.changes import Topic
from kiana.errors import BlockError, InputError, KianaError
from kiana.node import Node, Progress, now_ms
from kiana.store import PutResult

EXPORT_VERSION = 1
BATCH = 1000
MAX_LINE = 80 * 1024 * 1024


class ForeignMindError(InputError):
    """The export belongs to another mind; its blocks cannot verify here."""

    code = "foreign_mind"


@dataclass(slots=True)
class ImportReport:
    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    refused_erased: int = 0
    tombstones: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (line, code, message)

    @property
    def ok(self) -> bool:
        return not self.errors


def export_lines(node: Node) -> Iterator[str]:
    header = {
        "type": "kiana-export",
        "version": EXPORT_VERSION,
        "mind": node.mind_id,
        "exported": now_ms(),
    }
    yield _dumps(header)
    yield _dumps({"type": "genesis", "record": node.genesis.to_dict()})
    for block in node.store.iter_blocks():
        yield _dumps({"type": "block", "record": block.to_dict()})
    for tomb in node.store.iter_tombstones():
        yield _dumps({"type": "tombstone", "record": tomb.to_dict()})


def import_lines(
    node: Node, lines: Iterable[str | bytes], *, progress: Progress | None = None
) -> ImportReport:
    """Verify and store every record; bad lines are reported and skipped, never stored."""
    report = ImportReport()
    pending: list[Block] = []
    for number, line in enumerate(lines, start=1):
        report.lines += 1
        if not line.strip():
            continue
        try:
            _import_line(node, number, line, pending, report)
        except ForeignMindError as exc:
            if report.lines == 1 or not (report.stored or pending or report.errors):
                raise  # the file starts as another mind's export: stop before anything else
            report.errors.append((number, exc.code, exc.message))
        except KianaError as exc:
            report.errors.append((number, exc.code, exc.message))
        if len(pending) >= BATCH:
            _flush(node, pending, report)
        if progress:
            progress(len(line))
    _flush(node, pending, report)
    return report


def _import_line(
    node: Node, number: int, line: str | bytes, pending: list[Block], report: ImportReport
) -> None:
    if len(line) > MAX_LINE:
        raise InputError(f"line {number} is longer than {MAX_LINE} bytes")
    obj = loads_record(line)
    kind = obj.get("type")
    record: Any = obj.get("record")
    if kind == "kiana-export":
        if obj.get("version") != EXPORT_VERSION:
            raise InputError(f"unsupported export version {obj.get('version')!r}")
        if obj.get("mind") != node.mind_id:
            raise ForeignMindError(
                f"this export is from another mind ({obj.get('mind')}); "
                f"this device belongs to {node.mind_id}. Join that mind to receive its memory."
            )
        return
    if kind == "genesis":
        if not isinstance(record, dict) or record.get("mind") != node.mind_id:
            raise InputError("the export's genesis record belongs to another mind")
        return
    if kind == "block":
        block = parse_block(record, max_body=node.settings.max_body_bytes)
        verify_block(block, node.store.device_key)
        pending.append(block)
        return
    if kind == "tombstone":
        tomb = parse_tombstone(record)
        verify_tombstone(tomb, node.store.device_key)
        # Blocks queued before the tombstone must not outlive it.
        _flush(node, pending, report)
        node.store.erase(tomb, verified=True)
        node.unindex_blocks([tomb.erases])
        node.changes.publish(Topic.BLOCKS, local=True)
        report.tombstones += 1
        return
    raise BlockError(f"line {number}: unknown record type {kind!r}")


def _flush(node: Node, pending: list[Block], report: ImportReport) -> None:
    if not pending:
        return
    results = node.store.put_many(pending, verified=True)
    node.changes.publish(Topic.BLOCKS, local=True)  # the dashboard and sync wake at once
    for result in results:
        if result is PutResult.STORED:
            report.stored += 1
        elif result is PutResult.DUPLICATE:
            report.duplicates += 1
        else:
            report.refused_erased += 1
    # Duplicates too: a re-run import completes vectors a killed one did not make.
    node.index_blocks(
        [b for b, r in zip(pending, results, strict=True) if r is not PutResult.ERASED]
    )
    pending.clear()


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
