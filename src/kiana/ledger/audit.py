"""Reading the stored ledger for people: the head chain as stored, and its verification.

``kiana ledger show`` and ``kiana ledger verify`` work on what is in the database,
not on a rebuilt ``Ledger`` (which skips blocks that fail): the head is the stored
block with the most total difficulty (lowest hash on a tie), the chain is followed
through the stored parent links, and ``verify_chain`` checks every link from the
mind's genesis, reporting the first bad one. ``audit_stored`` does that and then
checks the verified part's commit and erase records against this device's blocks
(``kiana.ledger.commits``: warnings and errors), on one read of the chain;
``audit_json`` writes the result for ``kiana ledger verify --json`` (every finding)
and ``/api/v1/ledger/verify`` (counts, and at most ``limit`` findings of each level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiana.identity.mind import Genesis
from kiana.ledger.chain import genesis_block, parse_block
from kiana.ledger.commits import CommitReport, check_commits
from kiana.ledger.errors import LedgerError
from kiana.ledger.forkchoice import VerifyResult, verify_chain
from kiana.store.db import Database

FINDINGS_LIMIT = 50  # findings of each level /api/v1/ledger/verify lists (counts are whole)


@dataclass(frozen=True, slots=True)
class StoredChain:
    texts: list[str]  # block JSON, height 1 first (genesis is implicit)
    broken_at: int | None  # height whose parent is missing from the store, if any


def stored_head_chain(db: Database) -> StoredChain:
    rows = db.read(
        lambda c: c.all("SELECT hash, height, parent, data, total_difficulty FROM ledger_blocks")
    )
    if not rows:
        return StoredChain([], None)
    by_hash = {str(r[0]): r for r in rows}
    head = min(rows, key=lambda r: (-int(r[4]), str(r[0])))
    texts: list[str] = []
    row: Any = head
    broken: int | None = None
    while row is not None:
        texts.append(str(row[3]))
        if int(row[1]) <= 1:
            break
        parent = by_hash.get(str(row[2]))
        if parent is None:
            broken = int(row[1])
        row = parent
    texts.reverse()
    return StoredChain(texts, broken)


def verify_stored(db: Database, genesis: Genesis) -> VerifyResult:
    return _verify(stored_head_chain(db), genesis)


def _verify(chain: StoredChain, genesis: Genesis) -> VerifyResult:
    result = verify_chain([genesis_block(genesis), *chain.texts], genesis)
    if result.ok and chain.broken_at is not None:
        return VerifyResult(
            ok=False,
            height=chain.broken_at - 1,
            first_bad_height=chain.broken_at,
            code="bad_link",
            reason=f"the parent of block {chain.broken_at} is missing from the store",
        )
    return result


def report_json(report: CommitReport, *, limit: int | None = None) -> dict[str, Any]:
    """The commit check as JSON: every finding, or counts and the first ``limit`` of each level.

    Without ``limit`` this is ``kiana ledger verify --json``'s ``commits`` as it always was;
    with it (``/api/v1/ledger/verify``) ``error_count`` and ``warning_count`` say how many
    there are and the lists hold at most ``limit`` findings each (lowest height first).
    """

    def findings(level: str) -> list[dict[str, Any]]:
        found = [
            {"code": f.code, "height": f.height, "record": f.record, "message": f.message}
            for f in report.findings
            if f.level == level
        ]
        return found if limit is None else found[:limit]

    out: dict[str, Any] = {
        "checked": report.checked,
        "errors": findings("error"),
        "warnings": findings("warning"),
        "private": {"resolved": report.private_resolved, "not_checkable": report.private_opaque},
    }
    if limit is not None:
        out["error_count"] = len(report.errors)
        out["warning_count"] = len(report.warnings)
    return out


@dataclass(frozen=True, slots=True)
class LedgerAudit:
    """The stored chain verified from the genesis, and the verified part's commit check."""

    chain: VerifyResult
    commits: CommitReport

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.commits.errors


def audit_stored(db: Database, genesis: Genesis) -> LedgerAudit:
    """Verify the stored head chain, then check the commit records of its verified part.

    Blocking (reads the store): the API runs it off the event loop.
    """
    chain = stored_head_chain(db)
    result = _verify(chain, genesis)
    # texts[i] is height i + 1 when the chain reaches the genesis; verify_chain checked
    # heights 1..result.height (a chain that does not reach it verifies to height 0).
    verified = [parse_block(text) for text in chain.texts[: max(result.height, 0)]]
    return LedgerAudit(result, check_commits(db, genesis.device, verified))


def audit_json(audit: LedgerAudit, *, limit: int | None = None) -> dict[str, Any]:
    """``kiana ledger verify --json`` (every finding) and ``/api/v1/ledger/verify`` (``limit``)."""
    result = audit.chain
    return {
        "ok": audit.ok,
        "chain_ok": result.ok,
        "height": result.height,
        "first_bad_height": result.first_bad_height,
        "code": result.code or None,
        "reason": result.reason or None,
        "commits": report_json(audit.commits, limit=limit),
    }


def describe(db: Database, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` blocks of the stored head chain, newest first, for display."""
    chain = stored_head_chain(db)
    out: list[dict[str, Any]] = []
    for text in reversed(chain.texts[-limit:] if limit else chain.texts):
        try:
            block = parse_block(text)
        except LedgerError as exc:
            out.append({"error": exc.code, "reason": exc.message})
            continue
        out.append(
            {
                "height": block.height,
                "hash": block.hash,
                "parent": block.parent,
                "time": block.time,
                "signer": block.signer,
                "difficulty": block.difficulty,
                "in_turn": block.difficulty == 2,
                "records": [
                    {"id": r.id, "kind": r.kind, **_subject(r.to_dict())} for r in block.records
                ],
            }
        )
    return out


def _subject(raw: dict[str, Any]) -> dict[str, Any]:
    """What a record is about, without repeating membership JSON in full."""
    keep = {k: v for k, v in raw.items() if k in ("block", "tombstone")}
    if "record" in raw and isinstance(raw["record"], str):
        import json

        try:
            member = json.loads(raw["record"])
            keep["device"] = member.get("device")
            keep["action"] = member.get("action")
            keep["role"] = member.get("role")
        except ValueError:
            keep["device"] = None
    return keep
