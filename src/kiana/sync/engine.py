"""Block sync between the devices of a mind (sans-I/O with respect to the network).

``SyncEngine`` keeps two item sets of this device's store (everything; shared
only) and, per peer, runs range-based set reconciliation (``reconcile.py``) over
the view that peer may see: a device of the same person sees shared and private
items, any other device only shared ones. It then sends what the peer lacks and
asks for what it lacks, in batches. Every block that arrives is parsed and
verified (id, signature, author a member; a revoked author's block only if the
ledger committed it) before it is stored; a tombstone beats content, so erasures
spread and erased content is never taken back from a lagging peer.

The engine is driven by the mesh: ``peer_up``/``peer_down``, ``receive`` for
each message on the ``sync`` channel, and ``tick`` (which also notices blocks
written by other processes, e.g. ``kiana remember`` while ``kiana serve`` runs,
and pushes them at once). Every method returns ``(peer, message)`` pairs for
the caller to send; store calls are synchronous and belong on one thread.

Messages (first byte):

    R session(8) view(1) payload    reconciliation, initiator → responder
    r session(8) payload            reconciliation reply
    W ids(32 × n)                   want: send me these records
    D final(1) ids(32 × n)          done: the initiator will send these (so both sides
                                    can tell when they are in sync)
    B json lines                    records (blocks, tombstones): answers and pushes
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiana.blocks import Block, Tombstone
from kiana.blocks.codec import loads_record, parse_block, parse_tombstone
from kiana.blocks.signing import verify_block, verify_tombstone
from kiana.errors import BlockError, FrameError, KianaError
from kiana.store import BlockStore, PutResult
from kiana.sync.items import Cursor, SyncItem, erased_ids, fetch_records, record_of, scan
from kiana.sync.reconcile import ItemSet, Reconciler

log = logging.getLogger("kiana.sync")

SYNC_CHANNEL = "sync"
BATCH_BYTES = 480_000  # records per message, under the messenger's 1 MiB body limit
WANT_IDS = 8_000  # ids per want message
RESYNC_MS = 30_000
SESSION_TTL_MS = 120_000
FULL_SCAN_MS = 300_000

Out = tuple[str, bytes]


@dataclass(slots=True)
class PeerSync:
    """What sync knows about one peer."""

    device: str
    full_view: bool  # same person: private items too
    up: bool = False
    up_since: int = 0
    session: bytes = b""
    reconciler: Reconciler | None = None
    started: int = 0
    last_exchange: int | None = None
    last_reconciled: int | None = None
    wanted: set[str] = field(default_factory=set)  # ids asked for, not yet received
    behind: int = 0  # items the peer has that we lacked at the last reconciliation
    ahead: int = 0  # items we had that the peer lacked
    received: int = 0
    sent: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: int = 0
    next_resync: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a verified record may be stored here, and why not."""

    ok: bool
    reason: str = ""


# (record, sending peer) -> Verdict; the node decides membership, revocation, scope.
Admission = Callable[[Block | Tombstone, str], Verdict]


class SyncEngine:
    def __init__(
        self,
        store: BlockStore,
        *,
        me: str,
        same_person: Callable[[str], bool],
        admit: Admission,
        on_stored: Callable[[list[Block], list[str]], None] | None = None,
        may_erase: Callable[[str, str], bool] | None = None,
        resync_ms: int = RESYNC_MS,
        rng_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.me = me
        self.same_person = same_person
        self.admit = admit
        self.on_stored = on_stored
        self.may_erase = may_erase
        self.resync_ms = resync_ms
        self._random = rng_bytes
        self.peers: dict[str, PeerSync] = {}
        self._full = ItemSet([])
        self._shared = ItemSet([])
        self._private: set[str] = set()
        self._have: set[str] = set()
        self._erased: set[str] = set()
        self._cursor = Cursor()
        self._origin: dict[str, str] = {}  # id -> peer it came from (not pushed back there)
        self._responders: dict[tuple[str, bytes], tuple[Reconciler, int]] = {}
        self.rejections: list[tuple[str, str, str]] = []  # (peer, record id, reason), recent
        self._loaded = False
        self._next_full_scan = 0

    # -- local state -------------------------------------------------------------------

    def load(self) -> None:
        """Read every item of the store once (then ``tick`` picks up what is new)."""
        items, self._cursor = scan(self.store, Cursor())
        self._erased = erased_ids(self.store)
        for item in items:
            self._add_item(item)
        self._loaded = True

    def _add_item(self, item: SyncItem) -> bool:
        if item.id in self._have:
            return False
        if item.tombstone:
            self._erased.add(self._tomb_target(item.id))
        key = bytes.fromhex(item.id)
        self._have.add(item.id)
        self._full.add(item.created, key)
        if item.private:
            self._private.add(item.id)
        else:
            self._shared.add(item.created, key)
        return True

    def _tomb_target(self, tomb_id: str) -> str:
        row = self.store.db.read(
            lambda c: c.one("SELECT erases FROM tombstones WHERE id = ?", (tomb_id,))
        )
        return str(row[0]) if row else ""

    def _drop_block(self, block_id: str, created: int) -> None:
        if block_id not in self._have:
            return
        key = bytes.fromhex(block_id)
        self._have.discard(block_id)
        self._full.discard(created, key)
        if block_id in self._private:
            self._private.discard(block_id)
        else:
            self._shared.discard(created, key)

    def counts(self) -> dict[str, int]:
        return {"items": len(self._full), "shared": len(self._shared)}

    # -- peers -------------------------------------------------------------------------------

    def peer_up(self, peer: str, now: int) -> list[Out]:
        if not self._loaded:
            self.load()
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = PeerSync(peer, full_view=self.same_person(peer))
        state.up = True
        state.up_since = now
        state.full_view = self.same_person(peer)
        state.next_resync = now
        return self.tick(now)

    def peer_down(self, peer: str) -> None:
        state = self.peers.get(peer)
        if state is not None:
            state.up = False
            state.reconciler = None
            state.session = b""
            state.wanted.clear()  # asked again (from whoever has it) at the next session
            state.behind = 0

    def _start(self, state: PeerSync, now: int) -> list[Out]:
        """Begin reconciliation with a peer; the smaller device id initiates."""
        if self.me > state.device:
            return []
        state.session = self._random(8)
        state.reconciler = Reconciler(self._view(state.full_view), initiator=True)
        state.started = now
        view = b"\x01" if state.full_view else b"\x00"
        return self._out(state, b"R" + state.session + view + state.reconciler.initiate(), now)

    def _view(self, full: bool) -> ItemSet:
        return self._full if full else self._shared

    # -- time -----------------------------------------------------------------------------------

    def tick(self, now: int) -> list[Out]:
        if not self._loaded:
            self.load()
        out = self._push_new(now)
        for state in self.peers.values():
            if not state.up:
                continue
            stale = state.reconciler is not None and now - state.started > SESSION_TTL_MS
            if (state.reconciler is None or stale) and now >= state.next_resync:
                state.next_resync = now + self.resync_ms
                out += self._start(state, now)
        for key, (_, started) in list(self._responders.items()):
            if now - started > SESSION_TTL_MS:
                del self._responders[key]
        return out

    def _push_new(self, now: int) -> list[Out]:
        """Items written since the last scan (by anyone) go to every peer that may see them."""
        items, self._cursor = scan(self.store, self._cursor)
        if now >= self._next_full_scan:
            # PostgreSQL may commit sequence numbers out of order between processes: a row
            # the incremental scan stepped over is found by this periodic full one.
            self._next_full_scan = now + FULL_SCAN_MS
            everything, _ = scan(self.store, Cursor())
            items += [i for i in everything if i.id not in self._have]
        fresh = [i for i in items if self._add_item(i)]
        for item in fresh:
            if item.tombstone:
                self._forget_erased(item)
        if not fresh:
            return []
        out: list[Out] = []
        plan = {
            state.device: [
                i.id
                for i in fresh
                if (state.full_view or not i.private) and self._origin.get(i.id) != state.device
            ]
            for state in self.peers.values()
            if state.up
        }
        wanted = {i for ids in plan.values() for i in ids}
        # Read records back only if someone gets them (not after every batch received).
        records = {r.id: r for r in fetch_records(self.store, sorted(wanted))} if wanted else {}
        for state in self.peers.values():
            if state.up and plan.get(state.device):
                chosen = [records[i] for i in plan[state.device] if i in records]
                out += self._send_records(state, chosen, now)
        for item in fresh:
            self._origin.pop(item.id, None)
        return out

    def _forget_erased(self, item: SyncItem) -> None:
        target = self._tomb_target(item.id)
        if target:
            self._erased.add(target)
            row = self.store.db.read(
                lambda c: c.one("SELECT created FROM blocks WHERE id = ?", (target,))
            )
            if row is not None:
                self._drop_block(target, int(row[0]))

    # -- messages ------------------------------------------------------------------------------

    def receive(self, peer: str, body: bytes, now: int) -> list[Out]:
        if not self._loaded:
            self.load()
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = PeerSync(peer, full_view=self.same_person(peer))
        state.bytes_in += len(body)
        state.last_exchange = now
        kind = body[:1]
        try:
            if kind == b"R":
                return self._on_reconcile(state, body, now)
            if kind == b"r":
                return self._on_reply(state, body, now)
            if kind == b"W":
                return self._on_want(state, body, now)
            if kind == b"D":
                self._on_done(state, body, now)
                return []
            if kind == b"B":
                self._on_records(state, body[1:], now)
                return self._push_new(now)
            raise FrameError("unknown sync message")
        except FrameError as exc:
            log.warning("bad sync message from %s: %s", peer, exc.message)
            state.rejected += 1
            return []

    def _on_reconcile(self, state: PeerSync, body: bytes, now: int) -> list[Out]:
        if len(body) < 10:
            raise FrameError("a reconciliation message is truncated")
        session, view, payload = body[1:9], body[9], body[10:]
        full = view == 1 and self.same_person(state.device)
        key = (state.device, session)
        found = self._responders.get(key)
        if found is None:
            found = (Reconciler(self._view(full), initiator=False), now)
            self._responders[key] = found
        reply = found[0].reconcile(payload)
        return self._out(state, b"r" + session + (reply or b""), now)

    def _on_reply(self, state: PeerSync, body: bytes, now: int) -> list[Out]:
        session, payload = body[1:9], body[9:]
        rec = state.reconciler
        if rec is None or session != state.session:
            return []  # an old session's answer
        nxt = rec.reconcile(payload)
        if nxt is not None:
            return self._out(
                state, b"R" + session + (b"\x01" if state.full_view else b"\x00") + nxt, now
            )
        # Done: we know both differences.
        state.reconciler = None
        state.last_reconciled = now
        have = [h.hex() for h in rec.have]
        # Erased ids are asked for too when a tombstone may turn out not to be allowed
        # (it came before its block): the block then decides (``_overruled``).
        need = [
            n.hex() for n in rec.need if self.may_erase is not None or n.hex() not in self._erased
        ]
        state.ahead, state.behind = len(have), len(need)
        # Tell the responder what is coming before it comes, so it knows how far behind it
        # is while the records stream in (sent after them, the ids arrived when nothing was
        # missing any more: a device catching up showed "behind 0") and when it is in sync.
        out: list[Out] = []
        for start in range(0, max(1, len(have)), WANT_IDS):
            chunk = have[start : start + WANT_IDS]
            final = b"\x01" if start + WANT_IDS >= len(have) else b"\x00"
            out += self._out(state, b"D" + final + b"".join(bytes.fromhex(i) for i in chunk), now)
        out += self._send_records(state, fetch_records(self.store, have), now)
        # Ids already awaited from another peer are not asked for twice (a new device
        # linked to several peers would otherwise download everything from each).
        elsewhere = set().union(*(p.wanted for p in self.peers.values() if p is not state and p.up))
        need = [i for i in need if i not in elsewhere]
        state.wanted.update(need)
        for start in range(0, len(need), WANT_IDS):
            chunk = need[start : start + WANT_IDS]
            out += self._out(state, b"W" + b"".join(bytes.fromhex(i) for i in chunk), now)
        return out

    def _on_done(self, state: PeerSync, body: bytes, now: int) -> None:
        """The initiator finished reconciling with us; these ids are on their way here."""
        if len(body) < 2 or body[1] not in (0, 1) or (len(body) - 2) % 32:
            raise FrameError("a done message is malformed")
        raw = body[2:]
        ids = (raw[i : i + 32].hex() for i in range(0, len(raw), 32))
        # Records may have overtaken this message: only ids still missing are awaited.
        state.wanted.update(i for i in ids if i not in self._have and i not in self._erased)
        if body[1] == 1:
            state.last_reconciled = now
        state.behind = len(state.wanted)

    def _on_want(self, state: PeerSync, body: bytes, now: int) -> list[Out]:
        raw = body[1:]
        if len(raw) % 32:
            raise FrameError("a want message has a broken id list")
        ids = [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]
        allowed = [i for i in ids if state.full_view or i not in self._private]
        return self._send_records(state, fetch_records(self.store, allowed), now)

    def _send_records(
        self, state: PeerSync, records: list[Block | Tombstone], now: int
    ) -> list[Out]:
        out: list[Out] = []
        batch: list[bytes] = []
        size = 0
        for item in records:
            line = json.dumps(record_of(item), separators=(",", ":"), ensure_ascii=False).encode()
            if batch and size + len(line) > BATCH_BYTES:
                out += self._out(state, b"B" + b"\n".join(batch), now)
                batch, size = [], 0
            batch.append(line)
            size += len(line) + 1
        if batch:
            out += self._out(state, b"B" + b"\n".join(batch), now)
        state.sent += len(records)
        return out

    def _out(self, state: PeerSync, body: bytes, now: int) -> list[Out]:
        state.bytes_out += len(body)
        state.last_exchange = now
        return [(state.device, body)]

    # -- records arriving -------------------------------------------------------------------------

    def _on_records(self, state: PeerSync, payload: bytes, now: int) -> None:
        blocks: list[Block] = []
        for line in payload.split(b"\n"):
            if not line:
                continue
            try:
                obj = loads_record(line)
                record: Any = obj.get("record")
                if obj.get("type") == "tombstone":
                    tomb = parse_tombstone(record)
                    verify_tombstone(tomb, self.store.device_key)
                    self._check(state, tomb)
                    self._store_blocks(state, blocks)
                    blocks = []
                    self._store_tombstone(state, tomb)
                elif obj.get("type") == "block":
                    block = parse_block(record)
                    if block.id in self._erased and not self._overruled(block):
                        state.wanted.discard(block.id)
                        continue  # a tombstone beats content, whoever sends it
                    verify_block(block, self.store.device_key)
                    self._check(state, block)
                    blocks.append(block)
                else:
                    raise BlockError("unknown record type")
            except KianaError as exc:
                self._reject(state, obj_id(line), exc.code)
        self._store_blocks(state, blocks)

    def _overruled(self, block: Block) -> bool:
        """A tombstone that came before its block: drop it if its author may not erase it."""
        if self.may_erase is None:
            return False
        tomb = self.store.tombstone_for(block.id)
        if tomb is None or self.may_erase(tomb.author, block.author):
            return False
        try:
            verify_block(block, self.store.device_key)
        except KianaError:
            return False  # a forged block cannot lift a tombstone
        if not self.store.drop_tombstone(tomb.id):
            return False
        log.warning("dropped an erasure by %s that was not allowed", tomb.author)
        key = bytes.fromhex(tomb.id)
        self._have.discard(tomb.id)
        self._full.discard(tomb.created, key)
        self._shared.discard(tomb.created, key)
        self._private.discard(tomb.id)
        self._erased.discard(block.id)
        return True

    def _check(self, state: PeerSync, item: Block | Tombstone) -> None:
        verdict = self.admit(item, state.device)
        if not verdict.ok:
            refused = BlockError(f"refused by the admission rules: {verdict.reason}")
            refused.code = verdict.reason  # the rejection log shows the rule
            raise refused
        if isinstance(item, Block) and item.scope == "private" and not state.full_view:
            raise BlockError("a private block from a device of another person")

    def _reject(self, state: PeerSync, record_id: str, reason: str) -> None:
        state.rejected += 1
        state.wanted.discard(record_id)  # it will not come in a valid form from this peer
        state.behind = len(state.wanted)
        self.rejections.append((state.device, record_id, reason))
        del self.rejections[:-100]
        log.warning("rejected a record from %s: %s", state.device, reason)

    def _store_blocks(self, state: PeerSync, blocks: list[Block]) -> None:
        if not blocks:
            return
        results = self.store.put_many(blocks, verified=True)
        stored = [b for b, r in zip(blocks, results, strict=True) if r is PutResult.STORED]
        for block in blocks:
            state.wanted.discard(block.id)
        for block in stored:
            self._origin[block.id] = state.device
        state.received += len(stored)
        state.behind = len(state.wanted)
        if stored and self.on_stored is not None:
            self.on_stored(stored, [])

    def _store_tombstone(self, state: PeerSync, tomb: Tombstone) -> None:
        state.wanted.discard(tomb.id)
        if tomb.id in self._have:
            return
        self.store.erase(tomb, verified=True)
        self._origin[tomb.id] = state.device
        self._erased.add(tomb.erases)
        state.received += 1
        state.behind = len(state.wanted)
        if self.on_stored is not None:
            self.on_stored([], [tomb.erases])

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "device": s.device,
                "up": s.up,
                "in_sync": s.up
                and s.last_reconciled is not None
                and s.last_reconciled >= s.up_since
                and not s.wanted
                and s.reconciler is None,
                "behind": len(s.wanted),
                "ahead_at_last_check": s.ahead,
                "last_exchange": s.last_exchange,
                "last_reconciled": s.last_reconciled,
                "received": s.received,
                "sent": s.sent,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "rejected": s.rejected,
                "view": "shared+private" if s.full_view else "shared",
            }
            for s in sorted(self.peers.values(), key=lambda p: p.device)
        ]


def obj_id(line: bytes) -> str:
    """A record id for the rejection log, if one can be read."""
    try:
        value = json.loads(line).get("record", {}).get("id", "")
        return value if isinstance(value, str) else ""
    except (ValueError, AttributeError):
        return ""
