"""Shared CRDT state over the mesh's ``state`` channel, sans-I/O.

``StateGossip`` drives one ``SharedState`` replica against its peers:

* on ``peer_up`` it sends its state vector (``V``); a peer answers with the ops we
  lack (``O`` frames, ``delta_since``) and, if it lacks ops we have, with its own
  vector as a reply (``v``), which is answered with ops only (no ping-pong);
* ops of this replica written since the last ``tick`` go to every up peer;
* while ops are held back for a gap (``missing()``), the vector is sent again to
  the up peers every ``ASK_MS``, so a gap is filled from whoever has the ops;
* digests of the applied ops (``crdt_digest``) go with the vector on ``peer_up`` and
  to every up peer after the applied ops changed (at most every ``DIGEST_MS``), so
  peers that took different ops for one dot (an equivocation) find them: the peer
  whose log differs answers with chunk digests (``C``), the other with its ops of the
  differing chunks (``O``); ``SharedState.receive`` then holds both ops, keeps one by
  the rule every device applies, and the pair is sent on to every up peer (``O``).

Messages (first byte)::

    V state-vector JSON    my vector; send me what I lack, and yours if you lack something
    v state-vector JSON    my vector, as a reply; send me what I lack
    O op frame             ops (``encode_ops``), applied in any order
    H digests JSON         per replica, my applied seq and the digest of my log up to it
    C chunk digests JSON   where my log differs from your H: digests per chunk

Refusals: garbage frames and every op ``SharedState.receive`` refuses (forged, unknown
replica, bad signature, revoked sender: ``crdt_members``) are counted in ``rejected``
and per peer in ``refused``, kept in ``rejections`` as ``(peer, replica:seq, code)``
(the newest 100, like the block engine's refused records), handed to ``on_refused``
and logged; nothing here raises on bad input. Ops refused because their replica was
not a member yet are asked for again, from every up peer, once it is one. A proof of
equivocation is refused the same way (code ``equivocation``, counted against the peer
that sent it, which may be an honest device passing the proof on); the log line names
the device that equivocated, never the ops' content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from kiana.errors import FrameError, InputError
from kiana.sync.crdt import (
    Dot,
    Op,
    SharedState,
    decode_ops,
    decode_state_vector,
    encode_ops,
    encode_state_vector,
)
from kiana.sync.crdt_digest import (
    decode_chunks,
    decode_digests,
    differing_ops,
    differing_replicas,
    encode_digests,
)

log = logging.getLogger("kiana.sync.state")

STATE_CHANNEL = "state"
OPS_PER_FRAME = 2_000  # far under the messenger's 1 MiB body limit for ordinary values
ASK_MS = 2_000
DIGEST_MS = 1_000
MAX_UNKNOWN = 1_000  # replicas remembered to ask for again once they are members

Send = tuple[str, bytes]
OnRefused = Callable[[str, str, str], None]  # (peer, what: replica:seq, reason code)


class StateGossip:
    def __init__(
        self,
        state: SharedState,
        *,
        ask_ms: int = ASK_MS,
        digest_ms: int = DIGEST_MS,
        on_refused: OnRefused | None = None,
    ) -> None:
        self.state = state
        self.ask_ms = ask_ms
        self.digest_ms = digest_ms
        self.on_refused = on_refused
        self.refused: dict[str, int] = {}  # per peer: ops and frames refused
        self.rejections: list[tuple[str, str, str]] = []  # (peer, replica:seq, code), recent
        self._unknown: set[str] = set()
        self.up: dict[str, None] = {}  # insertion-ordered, so output order is deterministic
        self._sent_seq = self._own_seq()
        self._next_ask = 0
        self._next_digest = 0
        self._digested = state.version  # the state version the last digests described
        self.equivocations = 0  # proofs of equivocation received
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
        return [(peer, self._vector(b"V")), (peer, b"H" + encode_digests(self.state))]

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
                got = self.state.receive(decode_ops(body[1:]), sender=peer)
                self.ops_in += got.applied
                for refusal in got.refused:
                    self._refuse(peer, refusal.op, refusal.code, refusal.message)
                    if refusal.code == "unknown_replica" and len(self._unknown) < MAX_UNKNOWN:
                        self._unknown.add(refusal.op.rpartition(":")[0])
                    self.equivocations += refusal.code == "equivocation"
                return self._proofs(got.equivocated, self.up) + self._proofs(got.outdated, [peer])
            if kind == b"H":
                answer = differing_replicas(self.state, decode_digests(body[1:]))
                return [] if answer is None else [(peer, b"C" + answer)]
            if kind == b"C":
                return self._frames(peer, differing_ops(self.state, decode_chunks(body[1:])))
            raise FrameError("unknown state message")
        except (FrameError, InputError) as exc:
            self._refuse(peer, "", exc.code, exc.message)
            return []

    def _proofs(self, dots: tuple[Dot, ...], peers: Iterable[str]) -> list[Send]:
        """Both ops (the one kept, the other) of each of ``dots``, to ``peers``."""
        if not dots:
            return []
        pairs = self.state.equivocations()
        ops = [op for dot in dots if dot in pairs for op in pairs[dot]]
        out: list[Send] = []
        for peer in peers if ops else ():
            out += self._frames(peer, ops)
        return out

    def _refuse(self, peer: str, what: str, code: str, message: str) -> None:
        self.rejected += 1
        self.refused[peer] = self.refused.get(peer, 0) + 1
        self.rejections.append((peer, what, code))
        del self.rejections[:-100]
        if self.on_refused is not None:
            self.on_refused(peer, what, code)
        log.warning("refused state from %s: %s (%s)", peer, message, code)

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
        if self.state.version != self._digested and now >= self._next_digest:
            self._digested = self.state.version
            self._next_digest = now + self.digest_ms
            digests = b"H" + encode_digests(self.state)
            out += [(peer, digests) for peer in self.up]
        joined = {r for r in self._unknown if self.state.is_member(r)}
        self._unknown -= joined
        if joined or (self.state.held_count() and now >= self._next_ask):
            self._next_ask = now + self.ask_ms
            out += [(peer, self._vector(b"V")) for peer in self.up]
        return out


__all__ = ["ASK_MS", "DIGEST_MS", "STATE_CHANNEL", "StateGossip"]
