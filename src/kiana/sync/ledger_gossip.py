"""The mind's ledger over the mesh's ``ledger`` channel, sans-I/O.

``LedgerGossip`` glues one device's ``Ledger`` to its peers and to its block store:

* records: every shared knowledge block this device authors gets ``commit_record(id)``,
  every tombstone of a shared block it authors ``erase_record(tomb, block)``; private
  blocks and their tombstones get blinded ``private_record`` tokens instead, so the
  shared ledger never names a private id (found by scanning the store, so writes by
  other processes count too; a tombstone whose block is not here counts as private);
  membership records of the devices table are added at start and whenever the table
  changes. Pending records go to every up peer once (members relay them, authorities
  seal them), and again after a restart or a new link;
* sealing: an authority seals a commit only for a block its store holds (verified on
  the way in) or has the tombstone of, an erasure only for a tombstone it holds, and
  only once the writer is a member on the chain (``Ledger.vouch``); others wait;
* heads: on a new link and whenever our head changes we tell each up peer our head,
  or, if we know its head and ours is heavier, send the blocks it lacks (from the
  common ancestor up); a head we do not know is asked for by hash (``get``), and a
  block whose parent is missing (``Orphan``) makes us ask its sender for the parent;
* authorities try ``propose`` on every tick and announce the new block.
* every ``HEAD_MS`` the head is sent again (anti-entropy after lost state).

Messages are UTF-8 JSON objects, ``t`` says which::

    {"t": "head", "hash": h, "height": n, "td": total_difficulty}
    {"t": "get", "hash": h}              send me this block and up to 64 ancestors
    {"t": "blocks", "blocks": [...]}     ledger blocks (``LedgerBlock.to_dict``), oldest first
    {"t": "records", "records": [...]}   pending records (``Record.to_dict``)

Garbage is counted in ``rejected`` and logged; nothing here raises on bad input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from kiana.errors import KianaError
from kiana.identity.keys import DeviceKeys
from kiana.identity.membership import parse_membership
from kiana.ledger import Ledger, LedgerBlock, Orphan, Record, Rejected
from kiana.ledger.chain import block_from_dict
from kiana.ledger.forkchoice import heavier
from kiana.ledger.records import (
    HEX64,
    commit_record,
    erase_record,
    member_record,
    private_commit_token,
    private_erase_token,
    private_record,
    record_from_dict,
)
from kiana.store import BlockStore
from kiana.store.db import Conn
from kiana.store.rows import chunked_list

log = logging.getLogger("kiana.sync.ledger")

LEDGER_CHANNEL = "ledger"
GET_DEPTH = 64
BATCH_BYTES = 480_000
RECORDS_PER_MESSAGE = 500
HEAD_MS = 10_000
ASK_AGAIN_MS = 5_000
MEMBERS_MS = 2_000  # how often the devices table is checked for new membership records
VOUCH_AGAIN_MS = 1_000  # how often a record not yet sealable is checked again

Send = tuple[str, bytes]


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class LedgerGossip:
    def __init__(self, ledger: Ledger, store: BlockStore, keys: DeviceKeys) -> None:
        self.ledger = ledger
        self.store = store
        self.keys = keys
        self.me = keys.device_id
        self.up: dict[str, None] = {}
        self._sent: dict[str, set[str]] = {}  # peer -> record ids sent on this link
        self._told: dict[str, str] = {}  # peer -> our head hash last offered
        self._their_head: dict[str, tuple[str, int]] = {}  # peer -> (hash, total difficulty)
        self._asked: dict[str, int] = {}  # block hash -> when we asked for it
        self._block_seq = 0
        self._tomb_stored = -1
        self._next_head = 0
        self._members_seen: tuple[tuple[str, str], ...] = ()
        self._next_members = 0
        self._vouched: dict[str, str] = {}  # record id -> device that must be a member
        self._unvouched: dict[str, int] = {}  # record id -> when it was last found lacking
        self._now = 0
        self.rejected = 0
        self.proposed = 0
        self._add_members()
        ledger.vouch = self._vouch

    # -- records of this store --------------------------------------------------------------

    def _add_members(self) -> None:
        devices = self.store.devices()
        seen = tuple((d.device_id, d.record) for d in devices)
        if seen == self._members_seen:
            return
        self._members_seen = seen
        records: list[Record] = []
        for device in devices:
            if device.device_id == self.ledger.genesis.device:
                continue
            try:
                records.append(member_record(parse_membership(device.record)))
            except KianaError as exc:
                log.warning("device %s has no usable membership record: %s", device, exc)
        self.ledger.add_records(records)

    def _scan(self) -> None:
        """Commit records for blocks, erase records for tombstones this device authored."""
        me, seq, stored = self.me, self._block_seq, self._tomb_stored
        blocks = self.store.db.read(
            lambda c: c.all(
                "SELECT seq, id, scope, sig FROM blocks WHERE seq > ? AND author = ? ORDER BY seq",
                (seq, me),
            )
        )
        tombs = self.store.db.read(
            lambda c: c.all(
                "SELECT t.stored, t.id, t.erases, t.sig, b.scope FROM tombstones t"
                " LEFT JOIN blocks b ON b.id = t.erases WHERE t.stored >= ? AND t.author = ?"
                " ORDER BY t.stored, t.id",
                (stored, me),
            )
        )
        top = self.store.db.read(lambda c: c.one("SELECT MAX(seq) FROM blocks"))
        if top and top[0] is not None:
            self._block_seq = max(self._block_seq, int(top[0]))
        self._tomb_stored = max([int(r[0]) for r in tombs], default=self._tomb_stored)
        records = [
            commit_record(str(r[1]))
            if r[2] == "shared"
            else private_record(private_commit_token(str(r[1]), str(r[3])))
            for r in blocks
        ]
        records += [
            erase_record(str(r[1]), str(r[2]))
            if r[4] == "shared"
            else private_record(private_erase_token(str(r[1]), str(r[3])))
            for r in tombs
        ]
        if records:
            self.ledger.add_records(records)

    def _vouch(self, records: Sequence[Record]) -> dict[str, str]:
        """The sealing rule's local check (``Ledger.vouch``) over this device's store.

        A commit: the block is stored here (shared; its admission verified it) with its
        author, or only its tombstone is (erased before it reached us: no author known).
        An erasure: the tombstone is stored here and erases that block. A commit or
        erasure naming a private block is never sealed (records made before private ones
        were blinded). What holds is remembered; what does not is looked up again after
        ``VOUCH_AGAIN_MS``.
        """
        out: dict[str, str] = {}
        ask: list[Record] = []
        for r in records:
            known = self._vouched.get(r.id)
            if known is not None:
                out[r.id] = known
            elif self._now - self._unvouched.get(r.id, -VOUCH_AGAIN_MS) >= VOUCH_AGAIN_MS:
                ask.append(r)
        if not ask:
            return out
        commits = sorted({r.block for r in ask if r.kind == "commit"})
        tombs = sorted({r.tombstone for r in ask if r.kind == "erase"})

        def query(c: Conn) -> tuple[dict[str, tuple[str, str]], set[str], dict[str, Any]]:
            rows = chunked_list("SELECT id, author, scope FROM blocks WHERE id IN ({})", commits, c)
            erased = chunked_list("SELECT erases FROM tombstones WHERE erases IN ({})", commits, c)
            trows = chunked_list(
                "SELECT t.id, t.erases, t.author, b.scope FROM tombstones t"
                " LEFT JOIN blocks b ON b.id = t.erases WHERE t.id IN ({})",
                tombs,
                c,
            )
            return (
                {str(r[0]): (str(r[1]), str(r[2])) for r in rows},
                {str(r[0]) for r in erased},
                {str(r[0]): r for r in trows},
            )

        held, erased, held_tombs = self.store.db.read(query)
        for r in ask:
            author: str | None = None
            if r.kind == "commit":
                block = held.get(r.block)
                if block is not None:
                    author = block[0] if block[1] == "shared" else None
                elif r.block in erased:
                    author = ""
            else:
                tomb = held_tombs.get(r.tombstone)
                if tomb is not None and str(tomb[1]) == r.block and tomb[3] != "private":
                    author = str(tomb[2])
            if author is None:
                self._unvouched[r.id] = self._now
                continue
            self._unvouched.pop(r.id, None)
            self._vouched[r.id] = author
            out[r.id] = author
        if len(self._vouched) > 100_000:
            self._vouched.clear()  # committed ones are not asked about again
        if len(self._unvouched) > 100_000:
            self._unvouched.clear()
        return out

    # -- peers --------------------------------------------------------------------------------

    def peer_up(self, peer: str, now: int) -> list[Send]:
        self.up[peer] = None
        self._sent[peer] = set()
        self._told.pop(peer, None)
        return self._head_msg(peer) + self._records_to(peer)

    def peer_down(self, peer: str) -> None:
        self.up.pop(peer, None)
        self._sent.pop(peer, None)
        self._told.pop(peer, None)
        self._their_head.pop(peer, None)

    def _head_msg(self, peer: str) -> list[Send]:
        head = self.ledger.head
        self._told[peer] = head.hash
        msg = {"t": "head", "hash": head.hash, "height": head.height}
        return [(peer, _dump(msg | {"td": self.ledger.total_difficulty}))]

    def _records_to(self, peer: str) -> list[Send]:
        sent = self._sent.setdefault(peer, set())
        fresh = [r for r in self.ledger.pending if r.id not in sent]
        sent.update(r.id for r in fresh)
        return [
            (peer, _dump({"t": "records", "records": [r.to_dict() for r in chunk]}))
            for chunk in (
                fresh[i : i + RECORDS_PER_MESSAGE]
                for i in range(0, len(fresh), RECORDS_PER_MESSAGE)
            )
        ]

    def _blocks_msgs(self, peer: str, blocks: list[LedgerBlock]) -> list[Send]:
        out: list[Send] = []
        batch: list[dict[str, Any]] = []
        size = 0
        for b in blocks:
            d = b.to_dict()
            n = len(_dump(d))
            if batch and size + n > BATCH_BYTES:
                out.append((peer, _dump({"t": "blocks", "blocks": batch})))
                batch, size = [], 0
            batch.append(d)
            size += n
        if batch:
            out.append((peer, _dump({"t": "blocks", "blocks": batch})))
        return out

    def _path_from(self, known: str) -> list[LedgerBlock]:
        """Blocks of our head chain after its common ancestor with block ``known``."""
        a = self.ledger.block(known)
        b = self.ledger.head
        if a is None:
            return []
        path: list[LedgerBlock] = []
        while b.height > a.height:
            path.append(b)
            b = self._parent(b)
        while a.height > b.height:
            a = self._parent(a)
        while a.hash != b.hash:
            path.append(b)
            a, b = self._parent(a), self._parent(b)
        path.reverse()
        return path

    def _parent(self, block: LedgerBlock) -> LedgerBlock:
        parent = self.ledger.block(block.parent)
        assert parent is not None, "every stored block's parent is stored"
        return parent

    def _offer(self, peer: str) -> list[Send]:
        """Bring ``peer`` up to our head if we can tell it lacks it; else tell our head."""
        head = self.ledger.head
        if self._told.get(peer) == head.hash:
            return []
        theirs = self._their_head.get(peer)
        if theirs is not None and self.ledger.block(theirs[0]) is not None:
            if theirs[0] == head.hash:
                self._told[peer] = head.hash
                return []
            if heavier(self.ledger.total_difficulty, head.hash, theirs[1], theirs[0]):
                self._told[peer] = head.hash
                self._their_head[peer] = (head.hash, self.ledger.total_difficulty)
                return self._blocks_msgs(peer, self._path_from(theirs[0]))
        return self._head_msg(peer)

    def _ask(self, peer: str, block_hash: str, now: int) -> list[Send]:
        asked = self._asked.get(block_hash)
        if asked is not None and now - asked < ASK_AGAIN_MS:
            return []
        self._asked[block_hash] = now
        if len(self._asked) > 4096:
            self._asked.pop(next(iter(self._asked)))
        return [(peer, _dump({"t": "get", "hash": block_hash}))]

    # -- messages ------------------------------------------------------------------------------

    def handle(self, peer: str, body: bytes, now: int) -> list[Send]:
        try:
            msg = json.loads(body)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
            kind = msg.get("t")
            if kind == "head":
                return self._on_head(peer, msg, now)
            if kind == "get":
                return self._on_get(peer, _hash(msg.get("hash")))
            if kind == "blocks":
                return self._on_blocks(peer, msg.get("blocks"), now)
            if kind == "records":
                return self._on_records(msg.get("records"))
            raise ValueError("unknown ledger message")
        except (ValueError, RecursionError, KianaError) as exc:
            self.rejected += 1
            log.warning("bad ledger message from %s: %s", peer, exc)
            return []

    def _on_head(self, peer: str, msg: dict[str, Any], now: int) -> list[Send]:
        block_hash = _hash(msg.get("hash"))
        td = msg.get("td")
        if type(td) is not int or td < 0:
            raise ValueError("a head's total difficulty is a non-negative integer")
        self._their_head[peer] = (block_hash, td)
        if self.ledger.block(block_hash) is None:
            return self._ask(peer, block_hash, now)
        self._told.pop(peer, None)
        return self._offer(peer)

    def _on_get(self, peer: str, block_hash: str) -> list[Send]:
        block = self.ledger.block(block_hash)
        chain: list[LedgerBlock] = []
        while block is not None and block.height > 0 and len(chain) < GET_DEPTH:
            chain.append(block)
            block = self.ledger.block(block.parent)
        chain.reverse()
        return self._blocks_msgs(peer, chain)

    def _on_blocks(self, peer: str, raw: object, now: int) -> list[Send]:
        if not isinstance(raw, list):
            raise ValueError("blocks must be a list")
        before = self.ledger.head.hash
        out: list[Send] = []
        orphan = False
        for item in raw:
            try:
                block = block_from_dict(item)
                events = self.ledger.receive(block, now)
            except KianaError as exc:
                self.rejected += 1
                log.warning("bad ledger block from %s: %s", peer, exc.message)
                continue
            self._asked.pop(block.hash, None)
            for event in events:
                if isinstance(event, Rejected):
                    self.rejected += 1
                    log.warning("rejected ledger block from %s: %s", peer, event.reason)
                elif isinstance(event, Orphan) and not orphan:
                    orphan = True
                    out += self._ask(peer, event.missing, now)
        if self.ledger.head.hash != before:
            out += self._announce()
        elif peer in self.up:
            out += self._offer(peer)
        return out

    def _on_records(self, raw: object) -> list[Send]:
        if not isinstance(raw, list):
            raise ValueError("records must be a list")
        records: list[Record] = []
        for item in raw:
            try:
                records.append(record_from_dict(item))
            except KianaError as exc:
                self.rejected += 1
                log.warning("bad ledger record: %s", exc.message)
        self.ledger.add_records(records)
        return []

    def _announce(self) -> list[Send]:
        out: list[Send] = []
        for peer in self.up:
            out += self._offer(peer)
        return out

    # -- time -----------------------------------------------------------------------------------

    def tick(self, now: int) -> list[Send]:
        self._now = now
        if now >= self._next_members:
            self._next_members = now + MEMBERS_MS
            self._add_members()
        self._scan()
        before = self.ledger.head.hash
        if self.ledger.ready_at(self.me) is not None:
            block = self.ledger.propose(self.keys, now)
            if block is not None:
                self.proposed += 1
        out: list[Send] = []
        if now >= self._next_head:
            self._next_head = now + HEAD_MS
            for peer in self.up:
                out += self._head_msg(peer)
        elif self.ledger.head.hash != before:
            out += self._announce()
        for peer in self.up:
            out += self._records_to(peer)
        return out


def _hash(value: object) -> str:
    if not isinstance(value, str) or not HEX64.match(value):
        raise ValueError("a block hash is 64 lowercase hex characters")
    return value


__all__ = ["LEDGER_CHANNEL", "LedgerGossip"]
