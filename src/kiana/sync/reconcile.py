"""Range-based set reconciliation in the style of negentropy, sans-I/O.

Two devices each hold a set of *items* ``(timestamp ms, 32-byte id)`` and want
to learn the symmetric difference while sending little more than it. The
initiator cuts the item space into ranges and sends a 16-byte fingerprint of
each; the other side answers matching ranges with nothing and splits the rest
(or, when it holds few items there, lists them). Each round narrows the
differing ranges by a factor of ``buckets``, so ``d`` differences among ``n``
items take about ``log_buckets(n)`` round trips. (After Doug Hoyte,
"Range-Based Set Reconciliation", and his negentropy; our own code and a
slightly different wire format, see ``reconcile_wire.py``.)

Fingerprint of a range: the first 16 bytes of
``sha256(sum of ids as little-endian 256-bit ints mod 2**256 || varint(count))``,
exactly as negentropy. ``ItemSet`` keeps prefix sums, so any range's
fingerprint costs one subtraction and one hash.

The wire format (version 1: varint-coded range bounds, modes Skip, Fingerprint,
IdList and Diff, the frame limit) is in ``reconcile_wire.py``. A message longer
than the receiver's own limit, an unknown version, a truncated or malformed
message, or a Diff whose bitfield does not fit the receiver's range raises
:class:`kiana.errors.FrameError` and changes nothing.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice

from kiana.errors import FrameError
from kiana.sync.reconcile_wire import (
    DIFF,
    FINGERPRINT,
    FINGERPRINT_SIZE,
    ID_LIST,
    ID_SIZE,
    INF,
    MAX_BOUND,
    MAX_FP_RANGE,
    MAX_SKIP,
    MAX_TIMESTAMP,
    PROTOCOL_VERSION,
    RESERVE,
    ZERO,
    Bound,
    Range,
    Writer,
    between,
    check_bits,
    decode_varint,
    encode_varint,
    missing_bits,
    parse,
)

__all__ = [
    "FINGERPRINT_SIZE",
    "ID_SIZE",
    "MAX_TIMESTAMP",
    "PROTOCOL_VERSION",
    "ItemSet",
    "Reconciler",
    "decode_varint",
    "encode_varint",
]

_MOD = 2**256


# -- items ----------------------------------------------------------------------------------------


def _key(ts: int, id_: bytes) -> bytes:
    if not isinstance(ts, int) or not 0 <= ts <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp must be an int in [0, {MAX_TIMESTAMP}]")
    if not isinstance(id_, bytes) or len(id_) != ID_SIZE:
        raise ValueError(f"id must be {ID_SIZE} bytes")
    return ts.to_bytes(8, "big") + id_


class ItemSet:
    """A sorted set of ``(ts, id)`` with prefix sums of the ids for O(1) range fingerprints.

    Items are kept as 40-byte keys (big-endian ts + id), which sort like
    ``(ts, id)``. ``add``/``discard`` are one bisect and one list insert or
    delete; the prefix sums after the changed position are dropped and rebuilt
    on the next fingerprint (appending recent items rebuilds only the tail).
    """

    __slots__ = ("_keys", "_sums")

    def __init__(self, items: Iterable[tuple[int, bytes]] = ()) -> None:
        self._keys: list[bytes] = sorted({_key(ts, id_) for ts, id_ in items})
        self._sums: list[int] = [0]  # _sums[i] = sum of the first i ids; valid prefix only

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        try:
            key = _key(item[0], item[1])
        except ValueError:
            return False
        i = bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for k in self._keys:
            yield int.from_bytes(k[:8], "big"), k[8:]

    def add(self, ts: int, id_: bytes) -> bool:
        """Insert an item; False if it was already there."""
        key = _key(ts, id_)
        keys = self._keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return False
        keys.insert(i, key)
        self._invalidate(i)
        return True

    def discard(self, ts: int, id_: bytes) -> bool:
        """Remove an item; False if it was not there."""
        key = _key(ts, id_)
        keys = self._keys
        i = bisect_left(keys, key)
        if i >= len(keys) or keys[i] != key:
            return False
        del keys[i]
        self._invalidate(i)
        return True

    def snapshot(self) -> ItemSet:
        """A frozen copy for one reconciliation session (O(n) pointer copies)."""
        self._build()
        copy = ItemSet()
        copy._keys = list(self._keys)
        copy._sums = list(self._sums)
        return copy

    # -- used by Reconciler -----------------------------------------------------------------------

    def key(self, i: int) -> bytes:
        return self._keys[i]

    def index(self, key: bytes) -> int:
        """Position of the first item whose key is >= ``key``."""
        return bisect_left(self._keys, key)

    def ids(self, lo: int, hi: int) -> list[bytes]:
        return [k[8:] for k in self._keys[lo:hi]]

    def fingerprint(self, lo: int, hi: int) -> bytes:
        """negentropy fingerprint of the items at positions ``lo`` .. ``hi - 1``."""
        if len(self._sums) <= hi:
            self._build()
        total = (self._sums[hi] - self._sums[lo]) % _MOD
        data = total.to_bytes(32, "little") + encode_varint(hi - lo)
        return hashlib.sha256(data).digest()[:FINGERPRINT_SIZE]

    def _invalidate(self, i: int) -> None:
        if len(self._sums) > i + 1:
            del self._sums[i + 1 :]

    def _build(self) -> None:
        sums = self._sums
        start = len(sums) - 1
        if start >= len(self._keys):
            return
        frm = int.from_bytes
        ids = (frm(k[8:], "little") for k in self._keys[start:])
        sums.extend(islice(accumulate(ids, initial=sums[-1]), 1, None))


# -- the protocol ---------------------------------------------------------------------------------


class Reconciler:
    """One side of one reconciliation session over a snapshot of ``items``.

    The initiator calls :meth:`initiate`, sends the bytes, and feeds each reply
    to :meth:`reconcile` until it returns ``None``; then ``have`` (ids only it
    has) and ``need`` (ids only the peer has) are complete. The responder feeds
    every message to :meth:`reconcile` and sends back what it returns. Changes
    to ``items`` after construction do not affect a running session.
    """

    def __init__(
        self,
        items: ItemSet,
        *,
        initiator: bool,
        frame_limit: int = 60_000,
        buckets: int = 16,
        id_list_threshold: int = 32,
    ) -> None:
        if buckets < 2:
            raise ValueError("buckets must be at least 2")
        if id_list_threshold < 1:
            raise ValueError("id_list_threshold must be at least 1")
        minimum = 1 + MAX_SKIP + buckets * MAX_FP_RANGE + RESERVE
        if frame_limit < max(minimum, 512):
            raise ValueError(f"frame_limit must be at least {max(minimum, 512)} bytes")
        self._items = items.snapshot()
        self.initiator = initiator
        self.frame_limit = frame_limit
        self.buckets = buckets
        self.id_list_threshold = id_list_threshold
        self.have: list[bytes] = []
        self.need: list[bytes] = []
        self.rounds = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._started = False
        self._waiting = False
        self.done = False

    def initiate(self) -> bytes:
        """The first message (initiator only, once)."""
        if not self.initiator:
            raise RuntimeError("only the initiator initiates")
        if self._started:
            raise RuntimeError("already initiated")
        self._started = self._waiting = True
        w = Writer(self.frame_limit)
        rest = self._split(w, ZERO, INF, 0, len(self._items))
        if rest is not None:
            w.close(rest[0], INF, self._items.fingerprint(rest[1], len(self._items)))
        return self._send(w.done())

    def respond(self, message: bytes) -> bytes:
        """Responder only: :meth:`reconcile`, typed as always returning the reply."""
        if self.initiator:
            raise RuntimeError("respond() is for the responder; the initiator uses reconcile()")
        out = self.reconcile(message)
        assert out is not None  # the responder always answers
        return out

    def reconcile(self, message: bytes) -> bytes | None:
        """Process a peer message; the reply, or (initiator) None when complete."""
        if self.initiator and not self._waiting:
            raise FrameError("unexpected reconciliation message")
        ranges = parse(message, limit=self.frame_limit, diff_allowed=self.initiator)
        have: list[bytes] = []
        need: list[bytes] = []
        w = Writer(self.frame_limit)
        items = self._items
        lower, lo = ZERO, 0
        for r in ranges:
            hi = items.index(r.upper.key)
            rest: tuple[Bound, int] | None = None
            if r.mode == FINGERPRINT:
                if items.fingerprint(lo, hi) != r.fingerprint:
                    rest = self._split(w, lower, r.upper, lo, hi)
            elif r.mode == ID_LIST and self.initiator:
                mine = items.ids(lo, hi)
                theirs = set(r.ids)
                have += [i for i in mine if i not in theirs]
                mine_set = set(mine)
                need += [i for i in dict.fromkeys(r.ids) if i not in mine_set]
            elif r.mode == ID_LIST:
                rest = self._answer_list(w, lower, r, lo, hi)
            elif r.mode == DIFF:
                mine = items.ids(lo, hi)
                check_bits(r.bits, len(mine))
                have += [m for j, m in enumerate(mine) if r.bits[j >> 3] >> (j & 7) & 1]
                mine_set = set(mine)
                need += [i for i in dict.fromkeys(r.ids) if i not in mine_set]
            if rest is not None:
                # Only up to where the peer's message ended: what lies beyond was
                # settled in earlier rounds (reopening it reported those ids twice).
                end = ranges[-1].upper
                w.close(rest[0], end, items.fingerprint(rest[1], items.index(end.key)))
                break
            lower, lo = r.upper, hi
        self.rounds += 1
        self.bytes_received += len(message)
        self.have += have
        self.need += need
        out = w.done()
        if self.initiator and len(out) == 1:
            self._waiting = False
            self.done = True
            return None
        return self._send(out)

    def _send(self, out: bytes) -> bytes:
        self.bytes_sent += len(out)
        return out

    def _split(
        self, w: Writer, lower: Bound, upper: Bound, lo: int, hi: int
    ) -> tuple[Bound, int] | None:
        """Answer a differing range: list it if small, else fingerprints of ``buckets`` parts.

        Returns None when written, or where the message had to stop.
        """
        n = hi - lo
        if n < self.id_list_threshold or n < 2:
            return self._list(w, lower, upper, lo, hi)
        items = self._items
        parts = min(self.buckets, n)
        per, extra = divmod(n, parts)
        ranges: list[tuple[Bound, int, bytes]] = []
        cur = lo
        for i in range(parts):
            end = cur + per + (1 if i < extra else 0)
            bound = upper if i == parts - 1 else between(items.key(end - 1), items.key(end))
            ranges.append((bound, FINGERPRINT, items.fingerprint(cur, end)))
            cur = end
        return None if w.emit(lower, ranges) else (lower, lo)

    def _list(
        self, w: Writer, lower: Bound, upper: Bound, lo: int, hi: int
    ) -> tuple[Bound, int] | None:
        """An IdList of our items in the range, cut at an item if it does not fit."""
        items = self._items
        n = hi - lo
        fit = (w.room() - MAX_BOUND - 1 - 10) // ID_SIZE
        if n <= fit:
            payload = encode_varint(n) + b"".join(items.ids(lo, hi))
            return None if w.emit(lower, [(upper, ID_LIST, payload)]) else (lower, lo)
        if fit <= 0:
            return lower, lo
        cut = between(items.key(lo + fit - 1), items.key(lo + fit))
        payload = encode_varint(fit) + b"".join(items.ids(lo, lo + fit))
        if not w.emit(lower, [(cut, ID_LIST, payload)]):
            return lower, lo
        return cut, lo + fit

    def _answer_list(
        self, w: Writer, lower: Bound, r: Range, lo: int, hi: int
    ) -> tuple[Bound, int] | None:
        """Responder: a Diff against the initiator's IdList, or our own IdList if too big."""
        n = hi - lo
        room = w.room() - MAX_BOUND - 1 - 20 - (len(r.ids) + 7) // 8
        if (n - len(r.ids)) * ID_SIZE <= room:
            mine = self._items.ids(lo, hi)
            theirs = set(r.ids)
            missing = [m for m in mine if m not in theirs]
            if len(missing) * ID_SIZE <= room:
                bits = missing_bits(r.ids, set(mine))
                payload = (
                    encode_varint(len(missing))
                    + b"".join(missing)
                    + encode_varint(len(bits))
                    + bits
                )
                if w.emit(lower, [(r.upper, DIFF, payload)]):
                    return None
        return self._list(w, lower, r.upper, lo, hi)
