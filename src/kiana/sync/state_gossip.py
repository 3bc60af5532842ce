"""Shared CRDT state over the mesh's ``state`` channel, sans-I/O.

``StateGossip`` drives one ``SharedState`` replica against its peers:

* on ``peer_up`` it sends its state vector (``V``); a peer answers with the ops we
  lack (``O`` frames, ``delta_since``) and, if it lacks ops we have, with its own
  vector as a reply (``v``), which is answered with ops only (no ping-pong);
* ops of this replica written since the last ``tick`` go to every up peer;
* while ops are held back for a gap (``missing()``), the vector is sent again to
  the up peers every ``ASK_MS``, so a gap is filled from whoever has the ops.

Messages (first byte)::

    V state-vector JSON    my vector; send me what I lack, and yours if you lack something
    v state-vector JSON    my vector, as a reply; send me what I lack
    O op frame             ops (``encode_ops``), applied in any order

Garbage is counted in ``rejected`` and logged; nothing here raises on bad input.
"""

from __future__ import annotations

import logging

from kiana.errors import FrameError, InputError
from kiana.sync.crdt import (
    Op,
    SharedState,
    decode_ops,
    decode_state_vector,
    encode_ops,
    encode_state_vector,
)

log = logging.getLogger("kiana.sync.state")

STATE_CHANNEL = "state"
OPS_PER_FRAME = 2_000  # far under the messenger's 1 MiB body limit for ordinary values
ASK_MS = 2_000

Send = tuple[str, bytes]


class StateGossip:
    def __init__(self, state: SharedState, *, ask_ms: int = ASK_MS) -> None:
        self.state = state
        self.ask_ms = ask_ms
        self.up: dict[str, None] = {}  # insertion-ordered, so output order is deterministic
        self._sent_seq = self._own_seq()
        self._next_ask = 0
        self.rejected = 0
        self.ops_in = 0
        self.ops_out = 0

    def _own_seq(self) -> int:
        return self.state.state_vector().get(self.state.replica, 0)

    def _vector(self, kind: bytes) -> bytes:
        return kind + encode_state_vector(self.state.state_vector())

    def _frames(self, peer: str, ops: list[Op]) -> list[Send]:
        self.ops_out += len(ops)
        return [
            (peer, b"O" + encode_ops(ops[i : i + OPS_PER_FRAME]))
            for i in range(0, len(ops), OPS_PER_FRAME)
        ]

    # -- peers --------------------------------------------------------------------------

    def peer_up(self, peer: str, now: int) -> list[Send]:
        self.up[peer] = None
        return [(peer, self._vector(b"V"))]

    def peer_down(self, peer: str) -> None:
        self.up.pop(peer, None)

    # -- messages -------------------------------------------------------------------------

    def handle(self, peer: str, body: bytes, now: int) -> list[Send]:
        kind = body[:1]
        try:
            if kind in (b"V", b"v"):
                theirs = decode_state_vector(body[1:])
                out = self._frames(peer, self.state.delta_since(theirs))
                mine = self.state.state_vector()
                if kind == b"V" and any(s > mine.get(r, 0) for r, s in theirs.items()):
                    out.append((peer, self._vector(b"v")))
                return out
            if kind == b"O":
                ops = decode_ops(body[1:])
                self.ops_in += self.state.apply(ops)
                return []
            raise FrameError("unknown state message")
        except (FrameError, InputError) as exc:
            self.rejected += 1
            log.warning("bad state message from %s: %s", peer, exc.message)
            return []

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: int) -> list[Send]:
        out: list[Send] = []
        seq = self._own_seq()
        if seq > self._sent_seq:
            sv = self.state.state_vector()
            sv[self.state.replica] = self._sent_seq
            mine = [op for op in self.state.delta_since(sv) if op.replica == self.state.replica]
            for peer in self.up:
                out += self._frames(peer, mine)
            self._sent_seq = seq
        if self.state.held_count() and now >= self._next_ask:
            self._next_ask = now + self.ask_ms
            out += [(peer, self._vector(b"V")) for peer in self.up]
        return out


__all__ = ["ASK_MS", "STATE_CHANNEL", "StateGossip"]
