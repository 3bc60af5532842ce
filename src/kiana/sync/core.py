"""Everything one device runs above the messenger, sans-I/O: blocks, shared state, ledger.

``NodeCore`` owns

* a ``SyncEngine`` (channel ``sync``): range-based reconciliation of the block store;
* a ``SharedState`` with ``StateGossip`` (channel ``state``): the op-based CRDT, its ops
  signed with this device's key and checked against the members in the store;
* a ``Ledger`` with ``LedgerGossip`` (channel ``ledger``): records for the blocks and
  tombstones this device authors, heads, blocks, sealing when this device is an authority.

The caller (the mesh service, or the simulator in ``kiana.sync.sim``) tells it about
links (``peer_up``/``peer_down``), hands it every delivered message (``handle``) and
calls ``tick`` now and then (every 250 ms in the service); each returns
``(peer, channel, body)`` triples to send through the messenger. Local writes need no
call: the next ``tick`` finds new blocks and tombstones in the store and new ops in the
shared state and sends them. Garbage from a peer is counted (``rejected``) and logged;
it never raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from kiana.blocks import Block
from kiana.errors import KianaError
from kiana.identity.keys import DeviceKeys
from kiana.identity.mind import Genesis
from kiana.ledger import (
    DEFAULT_PARAMS,
    Ledger,
    LedgerStore,
    Params,
    commit_record,
    private_commit_token,
    private_record,
)
from kiana.store import BlockStore
from kiana.sync.crdt import OpStore, SharedState
from kiana.sync.crdt_members import store_directory
from kiana.sync.engine import RESYNC_MS, SYNC_CHANNEL, SyncEngine
from kiana.sync.ledger_gossip import LEDGER_CHANNEL, LedgerGossip
from kiana.sync.policy import admission, may_erase
from kiana.sync.state_gossip import STATE_CHANNEL, StateGossip

log = logging.getLogger("kiana.sync.core")

CHANNELS = (SYNC_CHANNEL, STATE_CHANNEL, LEDGER_CHANNEL)
Out = tuple[str, str, bytes]  # (peer, channel, body)


class NodeCore:
    def __init__(
        self,
        node_store: BlockStore,
        keys: DeviceKeys,
        genesis: Genesis,
        *,
        my_person: str,
        same_person: Callable[[str], bool],
        ledger_store: LedgerStore | None = None,
        state_store: OpStore | None = None,
        params: Params = DEFAULT_PARAMS,
        resync_ms: int = RESYNC_MS,
        rng_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.me = keys.device_id
        self.store = node_store
        if ledger_store is not None:
            self.ledger = Ledger.open(ledger_store, genesis, params=params)
        else:
            self.ledger = Ledger(genesis, params=params)
        self.engine = SyncEngine(
            node_store,
            me=self.me,
            same_person=same_person,
            admit=admission(
                node_store,
                my_person,
                committed=self._block_committed,
                committed_private=self._private_committed,
            ),
            may_erase=may_erase(node_store),
            resync_ms=resync_ms,
            rng_bytes=rng_bytes,
        )
        self.state = SharedState(
            self.me,
            signer=keys.signing,
            directory=store_directory(node_store),
            store=state_store,
        )
        self.state_gossip = StateGossip(self.state, on_refused=self._state_refused)
        self.ledger_gossip = LedgerGossip(self.ledger, node_store, keys)
        self.rejected = 0  # messages on unknown channels, or refused by a part that raised

    def _state_refused(self, peer: str, what: str, code: str) -> None:
        # Into the sync engine's log of refused records, with the blocks it refused.
        self.engine.rejections.append((peer, f"op {what}", code))
        del self.engine.rejections[:-100]

    def _block_committed(self, record_id: str) -> bool:
        try:
            return self.ledger.is_committed(commit_record(record_id).id)
        except KianaError:
            return False

    def _private_committed(self, block: Block) -> bool:
        if block.scope != "private":
            return False
        try:
            token = private_commit_token(block.id, block.sig)
        except KianaError:
            return False
        return self.ledger.is_committed(private_record(token).id)

    # -- links ----------------------------------------------------------------------------

    def peer_up(self, peer: str, now: int) -> list[Out]:
        out = _on(SYNC_CHANNEL, self.engine.peer_up(peer, now))
        out += _on(STATE_CHANNEL, self.state_gossip.peer_up(peer, now))
        out += _on(LEDGER_CHANNEL, self.ledger_gossip.peer_up(peer, now))
        return out

    def peer_down(self, peer: str) -> None:
        self.engine.peer_down(peer)
        self.state_gossip.peer_down(peer)
        self.ledger_gossip.peer_down(peer)

    # -- messages ---------------------------------------------------------------------------

    def handle(self, peer: str, channel: str, body: bytes, now: int) -> list[Out]:
        try:
            if channel == SYNC_CHANNEL:
                return _on(SYNC_CHANNEL, self.engine.receive(peer, body, now))
            if channel == STATE_CHANNEL:
                return _on(STATE_CHANNEL, self.state_gossip.handle(peer, body, now))
            if channel == LEDGER_CHANNEL:
                return _on(LEDGER_CHANNEL, self.ledger_gossip.handle(peer, body, now))
        except KianaError as exc:  # a part refused input it did not expect to see
            log.warning("refused a %s message from %s: %s", channel, peer, exc.message)
            self.rejected += 1
            return []
        log.warning("a message from %s on unknown channel %r", peer, channel)
        self.rejected += 1
        return []

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now: int) -> list[Out]:
        out = _on(SYNC_CHANNEL, self.engine.tick(now))
        out += _on(STATE_CHANNEL, self.state_gossip.tick(now))
        out += _on(LEDGER_CHANNEL, self.ledger_gossip.tick(now))
        return out

    def close(self) -> None:
        """Stop the threads the parts started (the sync engine's verify worker); store thread."""
        self.engine.close()

    def counts(self) -> dict[str, int]:
        return {
            "sync_rejected": sum(p.rejected for p in self.engine.peers.values()),
            "state_rejected": self.state_gossip.rejected,
            "ledger_rejected": self.ledger_gossip.rejected,
            "core_rejected": self.rejected,
            "ledger_height": self.ledger.head.height,
            "ledger_pending": len(self.ledger.pending),
        }


def _on(channel: str, sends: list[tuple[str, bytes]]) -> list[Out]:
    return [(peer, channel, body) for peer, body in sends]


__all__ = ["CHANNELS", "NodeCore", "Out"]
