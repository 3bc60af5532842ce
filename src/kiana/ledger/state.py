"""The authority set a chain implies at each height, and the sealing rules that use it.

Verification is self-contained from genesis: the genesis device is the first authority,
and every ``member`` record on the chain changes the set (an ``add`` with role
``authority`` admits an authority, a ``revoke`` removes the device). As in
``apply_membership``, an ``add`` for a device the chain already knows (even revoked) is a
no-op, so a revoked device cannot come back through an old record.

Sealing rules (Clique, EIP-225, adapted; ``n`` authorities at the parent, period ``P``):

* the in-turn signer at height ``h`` is ``sorted(authorities)[h % n]``; its block has
  difficulty 2 and may come ``P`` after its parent, anyone else's has difficulty 1 and
  may come only ``2P`` after its parent (Clique's "wiggle", made a fixed delay);
* signer limit: a signer may seal at most one of any ``floor(m/2) + 1`` consecutive
  blocks, where Clique takes ``m = n``. Here ``m`` counts only the *active* authorities:
  the signer itself plus every authority that sealed a block on this chain within the
  ``4nP`` milliseconds before the new block's time.

Why the adaptation is safe. With ``m = n`` a household whose second authority is asleep
stops: the lone device may seal only every other block and nobody seals the others.
Counting active authorities lets it go on after at most ``4nP``. This cannot be abused:

1. *Rate.* Every block is at least ``P`` after its parent and blocks more than
   ``max_drift`` in the future are refused, so no chain — honest or forged, one signer or
   many — holds more than ``(now - genesis) / P`` blocks. Dropping the limit on a private
   fork does not let a lone signer out-build the others by speed.
2. *Weight.* A lone signer is in turn at one height in ``n``; its other blocks weigh 1
   and need ``2P``. Its fork gains at most ``(n + 1) / ((2n - 1) P)`` difficulty per ms,
   while the other ``n - 1`` authorities together gain ``(2n - 1) / ((n + 1) P)``, which
   is more for every ``n >= 3``. (With ``n = 2`` the two sides of a partition are equal by
   construction; the deterministic tie-break picks one, and the reorg returns the losing
   side's records to the pending pool, so nothing is lost.)
3. *No monopoly while others are present.* On a chain the other authorities extend, they
   are active, so Clique's full limit holds: one signer (even a malicious one) seals at
   most one of any ``floor(n/2) + 1`` consecutive blocks and cannot censor records alone.
   The limit relaxes only for authorities that are demonstrably absent from that chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from kiana.errors import KianaError
from kiana.identity.membership import verify_membership
from kiana.identity.mind import Genesis
from kiana.ledger.errors import InvalidRecordError, SignerLimitError
from kiana.ledger.records import Record

Committed = Callable[[str], bool]
"""Whether a record id is already on the chain below the block being checked."""


@dataclass(frozen=True, slots=True)
class Params:
    """Chain constants. Every device of a mind must use the same values."""

    period_ms: int = 5_000  # minimum gap between a block and its parent (in turn)
    epoch: int = 100  # every epoch-th block is a checkpoint carrying the authority list
    max_drift_ms: int = 15_000  # how far in the future a received block may be
    max_records: int = 1_000  # records per block


DEFAULT_PARAMS = Params()


@dataclass(frozen=True, slots=True)
class ChainState:
    """What a chain implies after some block: authorities, known devices, last seals."""

    mind: str
    authorities: tuple[tuple[str, bytes], ...]  # (device id, signing key), sorted by id
    known: frozenset[str]  # every device ever added or revoked on this chain
    revoked: frozenset[str] = frozenset()  # devices revoked on this chain
    last_sealed: tuple[tuple[str, int, int], ...] = ()  # (device, height, time), sorted

    def key(self, device: str) -> bytes | None:
        for d, k in self.authorities:
            if d == device:
                return k
        return None

    def is_member(self, device: str) -> bool:
        """Whether ``device`` is a member (added, not revoked) on this chain."""
        return device in self.known and device not in self.revoked

    def signers(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.authorities)

    def in_turn(self, height: int) -> str:
        return self.authorities[height % len(self.authorities)][0]

    def last_of(self, device: str) -> tuple[int, int] | None:
        for d, h, t in self.last_sealed:
            if d == device:
                return h, t
        return None


def genesis_state(genesis: Genesis) -> ChainState:
    return ChainState(
        mind=genesis.mind_id,
        authorities=((genesis.device, genesis.sign_key),),
        known=frozenset({genesis.device}),
    )


def apply_records(
    state: ChainState, records: Iterable[Record], *, committed: Committed | None = None
) -> ChainState:
    """The state after ``records``, in order; ``InvalidRecordError`` if one does not hold."""
    for r in records:
        if committed is not None and committed(r.id):
            raise InvalidRecordError(f"record {r.id[:12]} is already on this chain")
        if r.kind == "member":
            state = _apply_member(state, r)
    return state


def _apply_member(state: ChainState, r: Record) -> ChainState:
    m = r.membership()
    try:
        verify_membership(m, mind_id=state.mind, authority_key=state.key)
    except KianaError as exc:
        raise InvalidRecordError(f"member record {r.id[:12]}: {exc.message}") from exc
    if m.action == "add":
        if m.device in state.known:
            return state
        auth = state.authorities
        if m.role == "authority":
            auth = tuple(sorted((*auth, (m.device, m.sign_key))))
        return replace(state, authorities=auth, known=state.known | {m.device})
    auth = tuple(a for a in state.authorities if a[0] != m.device)
    if not auth:
        raise InvalidRecordError(f"member record {r.id[:12]} would revoke the last authority")
    return replace(
        state,
        authorities=auth,
        known=state.known | {m.device},
        revoked=state.revoked | {m.device},
    )


def note_sealed(state: ChainState, signer: str, height: int, time: int) -> ChainState:
    current = set(state.signers())
    last = [e for e in state.last_sealed if e[0] != signer and e[0] in current]
    last.append((signer, height, time))
    return replace(state, last_sealed=tuple(sorted(last)))


def min_gap(state: ChainState, signer: str, height: int, params: Params) -> int:
    """How long after its parent a block by ``signer`` at ``height`` may come."""
    in_turn = state.in_turn(height) == signer
    return params.period_ms if in_turn else 2 * params.period_ms


def active_window(state: ChainState, params: Params) -> int:
    return 4 * len(state.authorities) * params.period_ms


def signer_limit(state: ChainState, signer: str, time: int, params: Params) -> int:
    """``floor(m/2) + 1`` with ``m`` the authorities active at ``time`` (signer included)."""
    since = time - active_window(state, params)
    others = sum(1 for d, _, t in state.last_sealed if d != signer and t > since)
    return (others + 1) // 2 + 1


def check_signer_limit(
    state: ChainState, signer: str, height: int, time: int, params: Params
) -> None:
    last = state.last_of(signer)
    if last is None:
        return
    limit = signer_limit(state, signer, time, params)
    if height - last[0] < limit:
        raise SignerLimitError(
            f"{signer} sealed block {last[0]}; it may seal only one of any {limit} "
            "consecutive blocks while other authorities are active"
        )


def earliest_time(
    state: ChainState, signer: str, height: int, parent_time: int, params: Params
) -> int | None:
    """The first time at which ``signer`` may seal at ``height``; None if never on this parent."""
    if state.key(signer) is None:
        return None
    base = parent_time + min_gap(state, signer, height, params)
    window = active_window(state, params)
    candidates = [base] + [t + window for d, _, t in state.last_sealed if t + window > base]
    for t in sorted(candidates):
        try:
            check_signer_limit(state, signer, height, t, params)
        except SignerLimitError:
            continue
        return t
    return None


__all__ = [
    "DEFAULT_PARAMS",
    "ChainState",
    "Committed",
    "Params",
    "apply_records",
    "check_signer_limit",
    "earliest_time",
    "genesis_state",
    "min_gap",
    "note_sealed",
    "signer_limit",
]
