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
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from kiana.blocks import Block, Tombstone
from kiana.errors import FrameError
from kiana.store import BlockStore
from kiana.sync.intake import Admission, Intake, PeerSync, Verdict, obj_id
from kiana.sync.items import Cursor, SyncItem, erased_ids, fetch_records, record_of, scan
from kiana.sync.reconcile import ItemSet, Reconciler

log = logging.getLogger("kiana.sync")

SYNC_CHANNEL = "sync"
BATCH_BYTES = 480_000  # records per message, under the messenger's 1 MiB body limit
WANT_IDS = 8_000  # ids per want message
RESYNC_MS = 30_000
SESSION_TTL_MS = 120_000
FULL_SCAN_MS = 300_000
SEND_READ = 300  # ids read from the store per step when sending records
SEND_BURST = 8  # records messages per peer per call (the rest at the next tick)

Out = tuple[str, bytes]


class SyncEngine(Intake):
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
        verify_threads: int = 1,
    ) -> None:
        self.store = store
        # Records of a large message are checked a slice ahead of the store (intake.py),
        # on this many worker threads (0: inline); started with the first such message.
        self.verify_threads = verify_threads
        self.verify_pool: Executor | None = None
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

    def close(self) -> None:
        """Stop the verify threads (if any were started) and wait for them to end; the engine
        still works, inline. Call it on the thread that runs the engine, between messages."""
        pool, self.verify_pool = self.verify_pool, None
        self.verify_threads = 0
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _pool(self) -> Executor | None:
        if self.verify_pool is None and self.verify_threads > 0:
            self.verify_pool = ThreadPoolExecutor(
                self.verify_threads, thread_name_prefix="kiana-sync-verify"
            )
        return self.verify_pool

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
            state.outgoing.clear()  # sent again if the peer still lacks it at the next session
            state.behind = 0

    def _start(self, state: PeerSync, now: int) -> list[Out]:
        """Begin reconciliation with a peer; the smaller device id initiates."""
        if self.me > state.device:
            return []
        state.session = self._random(8)
        state.reconciler = Reconciler(self._view(state.full_view), initiator=True)
        state.started = now
        state.asked = 0
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
            if state.outgoing:
                out += self._send_queued(state, now)
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
            view = b"\x01" if state.full_view else b"\x00"
            # Ask at once for what is known to be missing so far: a large difference then
            # streams in while the rest is reconciled (an empty device reconciling 20 000
            # ids took 11 rounds of 60 KB before it asked for anything).
            return self._out(state, b"R" + session + view + nxt, now) + self._ask(state, rec, now)
        # Done: we know both differences.
        state.reconciler = None
        state.last_reconciled = now
        have = [h.hex() for h in rec.have]
        state.ahead, state.behind = len(have), len(self._needed(rec.need))
        # Tell the responder what is coming before it comes, so it knows how far behind it
        # is while the records stream in (sent after them, the ids arrived when nothing was
        # missing any more: a device catching up showed "behind 0") and when it is in sync.
        out: list[Out] = []
        for start in range(0, max(1, len(have)), WANT_IDS):
            chunk = have[start : start + WANT_IDS]
            final = b"\x01" if start + WANT_IDS >= len(have) else b"\x00"
            out += self._out(state, b"D" + final + b"".join(bytes.fromhex(i) for i in chunk), now)
        state.outgoing.extend(have)  # read and sent a burst at a time (the rest at each tick)
        out += self._send_queued(state, now)
        return out + self._ask(state, rec, now)

    def _needed(self, ids: list[bytes]) -> list[str]:
        # Erased ids are asked for too when a tombstone may turn out not to be allowed
        # (it came before its block): the block then decides (``_overruled``).
        return [i.hex() for i in ids if self.may_erase is not None or i.hex() not in self._erased]

    def _ask(self, state: PeerSync, rec: Reconciler, now: int) -> list[Out]:
        """Want messages for the ids this session found missing here since the last call."""
        need = self._needed(rec.need[state.asked :])
        state.asked = len(rec.need)
        # Ids already awaited from another peer are not asked for twice (a new device
        # linked to several peers would otherwise download everything from each).
        elsewhere = set().union(*(p.wanted for p in self.peers.values() if p is not state and p.up))
        need = [i for i in need if i not in elsewhere]
        state.wanted.update(need)
        out: list[Out] = []
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
        state.outgoing.extend(allowed)
        return self._send_queued(state, now)

    def _send_queued(self, state: PeerSync, now: int) -> list[Out]:
        """Read and send the records queued for a peer: ``SEND_BURST`` full messages at most.

        A bulk answer (20 000 records) read all at once kept the store thread busy for
        most of a second before the first message left; a burst at a time, the first
        records are on their way at once and the next tick sends more.
        """
        out: list[Out] = []
        batch: list[bytes] = []
        size = sent = 0
        while state.outgoing and len(out) < SEND_BURST:
            step = min(SEND_READ, len(state.outgoing))
            ids = [state.outgoing.popleft() for _ in range(step)]
            records = fetch_records(self.store, ids)
            for n, item in enumerate(records):
                line = _line(item)
                if batch and size + len(line) > BATCH_BYTES:
                    out += self._out(state, b"B" + b"\n".join(batch), now)
                    batch, size = [], 0
                    if len(out) >= SEND_BURST:  # the rest of this step waits for the next
                        state.outgoing.extendleft(reversed([r.id for r in records[n:]]))
                        break
                batch.append(line)
                size += len(line) + 1
                sent += 1
        if batch:
            out += self._out(state, b"B" + b"\n".join(batch), now)
        state.sent += sent
        return out

    def _send_records(
        self, state: PeerSync, records: list[Block | Tombstone], now: int
    ) -> list[Out]:
        out: list[Out] = []
        batch: list[bytes] = []
        size = 0
        for item in records:
            line = _line(item)
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
                # This device is still comparing its set with the peer's: "behind" counts
                # only what the rounds so far found missing (a lower bound).
                "comparing": s.up and s.reconciler is not None,
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


def _line(item: Block | Tombstone) -> bytes:
    """A record as one line of a ``B`` message."""
    return json.dumps(record_of(item), separators=(",", ":"), ensure_ascii=False).encode()


__all__ = ["Admission", "PeerSync", "SyncEngine", "Verdict", "obj_id"]
