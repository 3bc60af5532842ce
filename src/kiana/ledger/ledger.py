"""The ledger core: the block tree, the head, the pending pool. Sans-I/O.

``Ledger`` takes blocks (``receive``) and records (``add_records``) and the current time,
and returns events and blocks to send; it never touches the network or a clock. A
``LedgerStore`` given to it is written through (blocks first, then pending changes), and
``Ledger.open`` rebuilds everything from one, verifying every block again from genesis.

Sealing rule (local, never part of verification): with a ``vouch`` given, an authority
seals a ``commit`` or ``erase`` record only if ``vouch`` says this device holds what it
names (a verified block or its tombstone; the tombstone) and the device that wrote it is
a member on the chain at that point (a member record earlier in the same block counts).
Other records wait in the pool until then (the block may still be on its way). Blocks
from peers are never judged by this rule: whether a device holds a knowledge block
depends on what reached it, and a verification rule that did would split the chain.
``private`` records (blinded, see ``kiana.ledger.records``) cannot be checked outside
their person and are sealed like member records, on the chain rules alone.

Invariant: every record the ledger has heard of is either committed on the head chain or
in ``pending``. On a reorg the records of the losing branch that the new head chain lacks
go back to ``pending`` and are sealed again; records of valid blocks off the head chain
are pending too. Nothing committed is ever dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from kiana.identity.keys import DeviceKeys
from kiana.identity.mind import Genesis
from kiana.ledger.chain import LedgerBlock, genesis_block, seal, verify_block
from kiana.ledger.errors import BadLinkError, BadTimeError, LedgerError
from kiana.ledger.forkchoice import heavier
from kiana.ledger.records import Record
from kiana.ledger.state import (
    DEFAULT_PARAMS,
    ChainState,
    Committed,
    Params,
    apply_records,
    earliest_time,
    genesis_state,
)
from kiana.ledger.store import LedgerStore

MAX_ORPHANS = 4096
VOUCHED_KINDS = ("commit", "erase")

Vouch = Callable[[Sequence[Record]], dict[str, str]]
"""Of these ``commit``/``erase`` records, the ones this device may seal: record id -> the
device that must be a member on the chain for it ("" if none); a record left out waits."""


@dataclass(frozen=True, slots=True)
class Accepted:
    block: str
    height: int
    head: bool  # the block is now the head


@dataclass(frozen=True, slots=True)
class Rejected:
    block: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reorg:
    old_head: str
    new_head: str
    returned: tuple[Record, ...]  # records of the losing branch, pending again


@dataclass(frozen=True, slots=True)
class Orphan:
    block: str
    missing: str  # ask a peer for this block


LedgerEvent = Accepted | Rejected | Reorg | Orphan


@dataclass(frozen=True, slots=True)
class _Node:
    block: LedgerBlock
    state: ChainState  # after this block
    total: int  # total difficulty from genesis


class Ledger:
    def __init__(
        self,
        genesis: Genesis,
        *,
        store: LedgerStore | None = None,
        params: Params = DEFAULT_PARAMS,
        vouch: Vouch | None = None,
    ) -> None:
        self.genesis = genesis
        self.params = params
        self.vouch = vouch  # the sealing rule's local check (None: seal on the chain rules)
        self._store = store
        root = genesis_block(genesis)
        self._nodes: dict[str, _Node] = {root.hash: _Node(root, genesis_state(genesis), 0)}
        self._main: list[str] = [root.hash]
        self._committed: dict[str, int] = {}  # record id -> height on the head chain
        self._pending: dict[str, Record] = {}
        self._orphans: dict[str, LedgerBlock] = {}

    @classmethod
    def open(
        cls, store: LedgerStore, genesis: Genesis, *, params: Params = DEFAULT_PARAMS
    ) -> Ledger:
        """Rebuild from ``store``, verifying every block; blocks that fail are ignored."""
        ledger = cls(genesis, params=params)
        for block in sorted(store.load_blocks(), key=lambda b: b.height):
            ledger.receive(block)
        ledger.add_records(store.load_pending())
        ledger._store = store
        return ledger

    # -- reading ------------------------------------------------------------

    @property
    def head(self) -> LedgerBlock:
        return self._nodes[self._main[-1]].block

    @property
    def total_difficulty(self) -> int:
        return self._nodes[self._main[-1]].total

    @property
    def pending(self) -> tuple[Record, ...]:
        return tuple(self._pending.values())

    def authorities(self) -> tuple[str, ...]:
        return self._nodes[self._main[-1]].state.signers()

    def is_committed(self, record_id: str) -> bool:
        return record_id in self._committed

    def block(self, block_hash: str) -> LedgerBlock | None:
        node = self._nodes.get(block_hash)
        return node.block if node is not None else None

    def chain(self) -> Iterator[LedgerBlock]:
        """The head chain, genesis first."""
        for h in list(self._main):
            yield self._nodes[h].block

    def ready_at(self, device: str) -> int | None:
        """When ``device`` may next seal on the head (None: not an authority / never)."""
        head = self._nodes[self._main[-1]]
        return earliest_time(
            head.state, device, head.block.height + 1, head.block.time, self.params
        )

    # -- records ------------------------------------------------------------

    def add_records(self, records: Iterable[Record]) -> int:
        """Add records to the pending pool; returns how many were new."""
        fresh = [r for r in records if r.id not in self._committed and r.id not in self._pending]
        fresh = list({r.id: r for r in fresh}.values())
        for r in fresh:
            self._pending[r.id] = r
        if fresh and self._store is not None:
            self._store.update_pending(fresh, ())
        return len(fresh)

    def propose(self, keys: DeviceKeys, now: int) -> LedgerBlock | None:
        """Seal the pending records on the head if this device may now; else None.

        In turn a device seals ``period`` after the head, out of turn ``2 * period`` after
        it, and later still if the signer limit says so (see ``kiana.ledger.state``).
        The block is applied here; send it to the other devices.
        """
        head = self._nodes[self._main[-1]]
        at = self.ready_at(keys.device_id)
        if at is None or at > now or not self._pending:
            return None
        records = self._select(head.state)
        if not records:
            return None
        block = seal(keys, head.block, records, now, head.state, self.params)
        events = self.receive(block, now)
        assert events and isinstance(events[0], Accepted), events
        return block

    def _select(self, state: ChainState) -> list[Record]:
        """Pending records that hold on ``state``, oldest first (repeated for dependencies)."""
        chosen: list[Record] = []
        left = list(self._pending.values())
        authors: dict[str, str] = {}
        if self.vouch is not None:
            checked = [r for r in left if r.kind in VOUCHED_KINDS]
            authors = self.vouch(checked) if checked else {}
            left = [r for r in left if r.kind not in VOUCHED_KINDS or r.id in authors]
        progress = True
        while left and progress and len(chosen) < self.params.max_records:
            progress = False
            for r in list(left):
                if len(chosen) >= self.params.max_records:
                    break
                author = authors.get(r.id)
                if author and not state.is_member(author):
                    continue  # its member record may come later in this block or the next
                try:
                    state = apply_records(state, [r])
                except LedgerError:
                    continue
                chosen.append(r)
                left.remove(r)
                progress = True
        return chosen

    # -- blocks -------------------------------------------------------------

    def receive(self, block: LedgerBlock, now: int | None = None) -> list[LedgerEvent]:
        """Verify and attach ``block``, and any orphans waiting for it.

        ``now`` (ms): blocks more than ``max_drift_ms`` ahead of it are rejected (send them
        again later); ``None`` skips that check (rebuilding from a store).
        """
        if block.hash in self._nodes:
            return []
        if now is not None and block.time > now + self.params.max_drift_ms:
            err = BadTimeError(f"block {block.height} is from the future")
            return [Rejected(block.hash, err.code, err.message)]
        if block.parent not in self._nodes:
            if block.height == 0:
                err2 = BadLinkError("a genesis block of another mind")
                return [Rejected(block.hash, err2.code, err2.message)]
            if len(self._orphans) >= MAX_ORPHANS:
                self._orphans.pop(next(iter(self._orphans)))
            self._orphans[block.hash] = block
            return [Orphan(block.hash, block.parent)]
        events: list[LedgerEvent] = []
        todo = [block]
        while todo:
            b = todo.pop()
            events.extend(self._attach(b))
            if b.hash in self._nodes:
                waiting = [o for o in self._orphans.values() if o.parent == b.hash]
                for o in waiting:
                    del self._orphans[o.hash]
                todo.extend(waiting)
        return events

    def _attach(self, block: LedgerBlock) -> list[LedgerEvent]:
        parent = self._nodes[block.parent]
        try:
            state = verify_block(
                block,
                parent.block,
                parent.state,
                params=self.params,
                committed=self._committed_below(parent.block),
            )
        except LedgerError as exc:
            return [Rejected(block.hash, exc.code, exc.message)]
        node = _Node(block, state, parent.total + block.difficulty)
        self._nodes[block.hash] = node
        if self._store is not None:
            self._store.put_block(block, node.total)
        head = self._nodes[self._main[-1]]
        if not heavier(node.total, block.hash, head.total, head.block.hash):
            self.add_records(block.records)
            return [Accepted(block.hash, block.height, head=False)]
        events: list[LedgerEvent] = [Accepted(block.hash, block.height, head=True)]
        if block.parent == head.block.hash:
            self._main.append(block.hash)
            self._commit(block)
            self._unpend(block.records)
            return events
        events.append(self._reorg(node))
        return events

    def _commit(self, block: LedgerBlock) -> None:
        for r in block.records:
            self._committed[r.id] = block.height

    def _unpend(self, records: Iterable[Record]) -> None:
        gone = [r.id for r in records if self._pending.pop(r.id, None) is not None]
        if gone and self._store is not None:
            self._store.update_pending((), gone)

    def _reorg(self, node: _Node) -> Reorg:
        old_head = self._main[-1]
        branch: list[LedgerBlock] = []
        cur = node
        while not self._on_main(cur.block):
            branch.append(cur.block)
            cur = self._nodes[cur.block.parent]
        fork = cur.block.height
        losing = [self._nodes[h].block for h in self._main[fork + 1 :]]
        for b in losing:
            for r in b.records:
                del self._committed[r.id]
        del self._main[fork + 1 :]
        for b in reversed(branch):
            self._main.append(b.hash)
            self._commit(b)
            self._unpend(b.records)
        returned = tuple(r for b in losing for r in b.records if r.id not in self._committed)
        self.add_records(returned)
        return Reorg(old_head, node.block.hash, returned)

    def _on_main(self, block: LedgerBlock) -> bool:
        return block.height < len(self._main) and self._main[block.height] == block.hash

    def _committed_below(self, parent: LedgerBlock) -> Committed:
        """Which record ids are on the chain ending at ``parent``."""
        committed = self._committed
        side: set[str] = set()
        cur = parent
        while not self._on_main(cur):  # walk a side branch back to the head chain
            side.update(r.id for r in cur.records)
            cur = self._nodes[cur.parent].block
        fork = cur.height

        def below(record_id: str) -> bool:
            h = committed.get(record_id)
            return record_id in side or (h is not None and h <= fork)

        return below


__all__ = ["Accepted", "Ledger", "LedgerEvent", "Orphan", "Rejected", "Reorg", "Vouch"]
