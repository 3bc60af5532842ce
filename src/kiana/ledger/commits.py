"""Checking the stored chain's commit and erase records against this device's blocks.

Chain verification (``verify_chain``) never looks at knowledge blocks: blocks and chain
blocks reach devices in any order, and a rule that depended on what has arrived would
make devices disagree about the chain. This audit does look, after the fact, and says
what it finds as *warnings* (may clear up with sync; nothing is wrong with the chain)
or *errors* (the chain commits something this device can prove wrong):

* warning ``commit_absent``: a shared commit whose block, or its tombstone, is not on
  this device (not synced yet, or the sealer committed an id nobody has);
* warning ``erase_absent``: an erasure whose tombstone is not on this device;
* warning ``commit_before_member``: the block's writer had no member record on the chain
  at that height (it came later, or not yet: sealed before the sealing rule existed);
* error ``commit_by_revoked``: the block's writer was revoked on the chain before the
  block that commits it;
* error ``private_id_in_ledger``: a commit or erasure names a block that is private here
  (sealed before private records were blinded: the id is public for good).

``private`` records are counted: ``resolved`` ones match a private block or tombstone on
this device; the others cannot be checked here (another person's private memory, or not
synced yet) and are not findings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kiana.ledger.chain import LedgerBlock
from kiana.ledger.records import private_commit_token, private_erase_token
from kiana.store.db import Conn, Database
from kiana.store.rows import chunked_list

ERRORS = ("commit_by_revoked", "private_id_in_ledger")


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # "warning" | "error"
    code: str
    height: int
    record: str  # record id
    message: str


@dataclass(frozen=True, slots=True)
class CommitReport:
    checked: int = 0  # commit and erase records looked at
    findings: tuple[Finding, ...] = ()
    private_resolved: int = 0
    private_opaque: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]


@dataclass(slots=True)
class _Local:
    blocks: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (author, scope)
    erased: set[str] = field(default_factory=set)  # block ids with a tombstone here
    tombs: set[str] = field(default_factory=set)  # tombstone ids
    tokens: set[str] = field(default_factory=set)  # private tokens of what is here


def _local(db: Database, blocks: Sequence[str], tombs: Sequence[str]) -> _Local:
    def query(c: Conn) -> _Local:
        out = _Local()
        rows = chunked_list("SELECT id, author, scope FROM blocks WHERE id IN ({})", blocks, c)
        out.blocks = {str(r[0]): (str(r[1]), str(r[2])) for r in rows}
        rows = chunked_list("SELECT erases FROM tombstones WHERE erases IN ({})", blocks, c)
        out.erased = {str(r[0]) for r in rows}
        rows = chunked_list("SELECT id FROM tombstones WHERE id IN ({})", tombs, c)
        out.tombs = {str(r[0]) for r in rows}
        for r in c.all("SELECT id, sig FROM blocks WHERE scope = 'private'"):
            out.tokens.add(private_commit_token(str(r[0]), str(r[1])))
        for r in c.all(
            "SELECT t.id, t.sig FROM tombstones t LEFT JOIN blocks b ON b.id = t.erases"
            " WHERE b.scope IS NULL OR b.scope = 'private'"
        ):
            out.tokens.add(private_erase_token(str(r[0]), str(r[1])))
        return out

    return db.read(query)


def check_commits(db: Database, genesis_device: str, chain: Iterable[LedgerBlock]) -> CommitReport:
    """Check the commit and erase records of ``chain`` (height 1 first, verified)."""
    blocks = list(chain)
    commits = sorted({r.block for b in blocks for r in b.records if r.kind in ("commit", "erase")})
    tomb_ids = sorted({r.tombstone for b in blocks for r in b.records if r.kind == "erase"})
    local = _local(db, commits, tomb_ids)
    added: dict[str, int] = {genesis_device: 0}  # device -> height of its member record
    revoked: dict[str, int] = {}
    findings: list[Finding] = []
    checked = resolved = opaque = 0

    def note(level: str, code: str, height: int, rid: str, message: str) -> None:
        findings.append(Finding(level, code, height, rid, message))

    pending: list[tuple[int, str, str, str]] = []  # (height, record id, block, author)
    for b in blocks:
        for r in b.records:
            if r.kind == "member":
                m = r.membership()
                if m.action == "add":
                    added.setdefault(m.device, b.height)
                else:
                    revoked.setdefault(m.device, b.height)
                continue
            if r.kind == "private":
                if r.token in local.tokens:
                    resolved += 1
                else:
                    opaque += 1
                continue
            checked += 1
            held = local.blocks.get(r.block)
            if held is not None and held[1] == "private":
                note(
                    "error",
                    "private_id_in_ledger",
                    b.height,
                    r.id,
                    f"block {b.height}: a {r.kind} record names private block {r.block[:12]}",
                )
            if r.kind == "erase":
                if r.tombstone not in local.tombs:
                    note(
                        "warning",
                        "erase_absent",
                        b.height,
                        r.id,
                        f"block {b.height}: tombstone {r.tombstone[:12]} is not on this device",
                    )
                continue
            if held is None:
                if r.block not in local.erased:
                    note(
                        "warning",
                        "commit_absent",
                        b.height,
                        r.id,
                        f"block {b.height} commits {r.block[:12]}, which is not on this device",
                    )
                continue
            pending.append((b.height, r.id, r.block, held[0]))
    for height, rid, block_id, author in pending:
        gone = revoked.get(author)
        if gone is not None and gone < height:
            note(
                "error",
                "commit_by_revoked",
                height,
                rid,
                f"block {height} commits {block_id[:12]} by {author}, revoked at block {gone}",
            )
        elif added.get(author, height + 1) > height:
            note(
                "warning",
                "commit_before_member",
                height,
                rid,
                f"block {height} commits {block_id[:12]} by {author}, "
                "not a member on the chain at that height",
            )
    findings.sort(key=lambda f: (f.height, f.code, f.record))
    return CommitReport(checked, tuple(findings), resolved, opaque)


__all__ = ["ERRORS", "CommitReport", "Finding", "check_commits"]
