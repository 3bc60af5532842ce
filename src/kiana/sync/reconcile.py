"""Range-based set reconciliation in the style of negentropy, sans-I/O.

Two devices each hold a set of *items* ``(timestamp ms, 32-byte id)`` and want
to learn the symmetric difference while sending little more than it. The
initiator cuts the item space into ranges and sends a 16-byte fingerprint of
each; the other side answers matching ranges with nothing and splits the rest
(or, when it holds few items there, lists them). Each round narrows the
differing ranges by a factor of ``buckets``, so ``d`` differences among ``n``
items take about ``log_buckets(n)`` round trips. (After Doug Hoyte,
"Range-Based Set Reconciliation", and his negentropy; our own code and a
slightly different wire format, see below.)

Fingerprint of a range: the first 16 bytes of
``sha256(sum of ids as little-endian 256-bit ints mod 2**256 || varint(count))``,
exactly as negentropy. ``ItemSet`` keeps prefix sums, so any range's
fingerprint costs one subtraction and one hash.

Wire format (version 1)::

    message := VERSION(0x01) range*
    range   := bound mode payload        lower bound = previous range's upper bound
                                         (the first starts at (0, b"")); ranges after
                                         the last are skipped (nothing to say)
    bound   := varint(ts_code) varint(len) id_prefix[len]
               ts_code 0 = infinity, else 1 + (ts - previous bound's ts in this message);
               id_prefix is the shortest prefix that separates the item from its
               predecessor (a bound (ts, p) sorts like (ts, p + zero padding))
    mode 0  Skip         -                      nothing to do in this range
    mode 1  Fingerprint  16 bytes               compare; split or list if different
    mode 2  IdList       varint(n) id[32]*n     every id the sender has in the range
    mode 3  Diff         varint(n) id[32]*n     responder -> initiator only, answering an
                         varint(m) bits[m]      IdList: the ids the initiator lacks, and a
                                                bitfield over the initiator's own ids in
                                                the range (sorted, bit i = 1 << i % 8 of
                                                byte i // 8): set = the responder lacks it

``varint`` is negentropy's: big-endian base 128, high bit set on all bytes but
the last, minimal length, < 2**64. Differences from negentropy v1: the version
byte, and mode 3 (negentropy's responder answers an IdList with its own full
IdList; a Diff is usually a few bytes instead of ``32 * n``). The responder
still answers with an IdList when the Diff would not fit the frame.

Frame limit: no message is longer than ``frame_limit``. When the answer to a
message would be longer, the writer stops at a range boundary and closes the
message with one Fingerprint over everything from there to infinity; the peer
then resumes from that point (negentropy does the same). Long one-sided
listings are cut inside the range at an item boundary.

Both sides must use the same ``frame_limit`` or larger; a message longer than
the receiver's own limit, an unknown version, a truncated or malformed message,
or a Diff whose bitfield does not fit the receiver's range raises
:class:`kiana.errors.FrameError` and changes nothing.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, islice

from kiana.errors import FrameError

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

PROTOCOL_VERSION = 0x01
ID_SIZE = 32
FINGERPRINT_SIZE = 16
MAX_TIMESTAMP = 2**64 - 2  # 2**64 - 1 is the infinity bound
_INF_TS = 2**64 - 1
_MOD = 2**256

SKIP, FINGERPRINT, ID_LIST, DIFF = 0, 1, 2, 3

_KEY_SIZE = 8 + ID_SIZE
_ZERO_KEY = bytes(_KEY_SIZE)
_MAX_BOUND = 10 + 1 + ID_SIZE  # ts varint, prefix length, prefix
_MAX_SKIP = _MAX_BOUND + 1
_RESERVE = _MAX_SKIP + 2 + 1 + FINGERPRINT_SIZE  # skip + closing fingerprint to infinity
_MAX_FP_RANGE = _MAX_BOUND + 1 + FINGERPRINT_SIZE


# -- varints --------------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """negentropy's varint: big-endian base 128, continuation bit on all bytes but the last."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n:
        out.append(n & 0x7F)
        n >>= 7
    out.reverse()
    for i in range(len(out) - 1):
        out[i] |= 0x80
    return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The value at ``pos`` and the position after it; FrameError if malformed."""
    end = len(data)
    if pos < end and data[pos] == 0x80:
        raise FrameError("non-minimal varint")
    n = 0
    for _ in range(10):
        if pos >= end:
            raise FrameError("truncated varint")
        b = data[pos]
        pos += 1
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            if n >= 2**64:
                raise FrameError("varint out of range")
            return n, pos
    raise FrameError("varint too long")


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


# -- bounds and messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bound:
    ts: int
    prefix: bytes

    @property
    def key(self) -> bytes:
        if self.ts == _INF_TS:
            return b"\xff" * 8 + bytes(ID_SIZE)
        return self.ts.to_bytes(8, "big") + self.prefix + bytes(ID_SIZE - len(self.prefix))


_ZERO = _Bound(0, b"")
_INF = _Bound(_INF_TS, b"")


def _between(prev: bytes, cur: bytes) -> _Bound:
    """The shortest bound above item key ``prev`` and at or below item key ``cur``."""
    ts = int.from_bytes(cur[:8], "big")
    if prev[:8] != cur[:8]:
        return _Bound(ts, b"")
    n = 8
    while prev[n] == cur[n]:
        n += 1
    return _Bound(ts, cur[8 : n + 1])


@dataclass(frozen=True, slots=True)
class _Range:
    upper: _Bound
    mode: int
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()
    bits: bytes = b""


def _parse(message: bytes, *, limit: int, diff_allowed: bool) -> list[_Range]:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise FrameError("message must be bytes")
    data = bytes(message)
    if not data:
        raise FrameError("empty message")
    if len(data) > limit:
        raise FrameError("message longer than the frame limit")
    if data[0] != PROTOCOL_VERSION:
        raise FrameError(f"unsupported reconciliation version {data[0]}")
    pos, end, last_ts, prev_key = 1, len(data), 0, _ZERO_KEY
    out: list[_Range] = []
    while pos < end:
        code, pos = decode_varint(data, pos)
        plen, pos = decode_varint(data, pos)
        if plen > ID_SIZE or pos + plen > end:
            raise FrameError("bad bound prefix")
        prefix, pos = data[pos : pos + plen], pos + plen
        if last_ts == _INF_TS:
            raise FrameError("range after infinity")
        if code == 0:
            if plen:
                raise FrameError("infinity bound with an id prefix")
            ts = _INF_TS
        else:
            ts = last_ts + code - 1
            if ts > MAX_TIMESTAMP:
                raise FrameError("bound timestamp out of range")
        bound = _Bound(ts, prefix)
        key = bound.key
        if key <= prev_key:
            raise FrameError("bounds not increasing")
        last_ts, prev_key = ts, key
        mode, pos = decode_varint(data, pos)
        if mode == SKIP:
            out.append(_Range(bound, SKIP))
        elif mode == FINGERPRINT:
            if pos + FINGERPRINT_SIZE > end:
                raise FrameError("truncated fingerprint")
            out.append(_Range(bound, FINGERPRINT, data[pos : pos + FINGERPRINT_SIZE]))
            pos += FINGERPRINT_SIZE
        elif mode == ID_LIST or (mode == DIFF and diff_allowed):
            ids, pos = _read_ids(data, pos)
            bits = b""
            if mode == DIFF:
                m, pos = decode_varint(data, pos)
                if pos + m > end:
                    raise FrameError("truncated bitfield")
                bits, pos = data[pos : pos + m], pos + m
            out.append(_Range(bound, mode, ids=ids, bits=bits))
        else:
            raise FrameError(f"unknown range mode {mode}")
    return out


def _read_ids(data: bytes, pos: int) -> tuple[tuple[bytes, ...], int]:
    n, pos = decode_varint(data, pos)
    if n > (len(data) - pos) // ID_SIZE:
        raise FrameError("truncated id list")
    stop = pos + n * ID_SIZE
    return tuple(data[i : i + ID_SIZE] for i in range(pos, stop, ID_SIZE)), stop


class _Writer:
    """Builds one outgoing message, range by range, never past the frame limit."""

    __slots__ = ("buf", "last_ts", "limit", "upper")

    def __init__(self, limit: int) -> None:
        self.buf = bytearray((PROTOCOL_VERSION,))
        self.limit = limit
        self.last_ts = 0
        self.upper = _ZERO_KEY  # key of the last upper bound written

    def _bound(self, out: bytearray, b: _Bound) -> None:
        if b.ts == _INF_TS:
            out += b"\x00\x00"
        else:
            out += encode_varint(b.ts - self.last_ts + 1)
            out += encode_varint(len(b.prefix))
            out += b.prefix
        self.last_ts = b.ts
        self.upper = b.key

    def room(self) -> int:
        """Bytes left for ranges (beyond a leading Skip) before the closing reserve."""
        return self.limit - _RESERVE - len(self.buf) - _MAX_SKIP

    def emit(self, lower: _Bound, ranges: list[tuple[_Bound, int, bytes]]) -> bool:
        """Append ``ranges`` (starting at ``lower``) if they fit; else change nothing."""
        saved = (self.last_ts, self.upper)
        chunk = bytearray()
        if lower.key != self.upper:
            self._bound(chunk, lower)
            chunk.append(SKIP)
        for bound, mode, payload in ranges:
            self._bound(chunk, bound)
            chunk += encode_varint(mode)
            chunk += payload
        if len(self.buf) + len(chunk) + _RESERVE > self.limit:
            self.last_ts, self.upper = saved
            return False
        self.buf += chunk
        return True

    def close(self, lower: _Bound, fingerprint: bytes) -> None:
        """End the message with a Fingerprint over ``[lower, infinity)``; always fits."""
        self.limit += _RESERVE
        ok = self.emit(lower, [(_INF, FINGERPRINT, fingerprint)])
        self.limit -= _RESERVE
        assert ok

    def done(self) -> bytes:
        return bytes(self.buf)


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
        minimum = 1 + _MAX_SKIP + buckets * _MAX_FP_RANGE + _RESERVE
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
        w = _Writer(self.frame_limit)
        rest = self._split(w, _ZERO, _INF, 0, len(self._items))
        if rest is not None:
            w.close(rest[0], self._items.fingerprint(rest[1], len(self._items)))
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
        ranges = _parse(message, limit=self.frame_limit, diff_allowed=self.initiator)
        have: list[bytes] = []
        need: list[bytes] = []
        w = _Writer(self.frame_limit)
        items = self._items
        lower, lo = _ZERO, 0
        for r in ranges:
            hi = items.index(r.upper.key)
            rest: tuple[_Bound, int] | None = None
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
                _check_bits(r.bits, len(mine))
                have += [m for j, m in enumerate(mine) if r.bits[j >> 3] >> (j & 7) & 1]
                mine_set = set(mine)
                need += [i for i in dict.fromkeys(r.ids) if i not in mine_set]
            if rest is not None:
                w.close(rest[0], items.fingerprint(rest[1], len(items)))
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
        self, w: _Writer, lower: _Bound, upper: _Bound, lo: int, hi: int
    ) -> tuple[_Bound, int] | None:
        """Answer a differing range: list it if small, else fingerprints of ``buckets`` parts.

        Returns None when written, or where the message had to stop.
        """
        n = hi - lo
        if n < self.id_list_threshold or n < 2:
            return self._list(w, lower, upper, lo, hi)
        items = self._items
        parts = min(self.buckets, n)
        per, extra = divmod(n, parts)
        ranges: list[tuple[_Bound, int, bytes]] = []
        cur = lo
        for i in range(parts):
            end = cur + per + (1 if i < extra else 0)
            bound = upper if i == parts - 1 else _between(items.key(end - 1), items.key(end))
            ranges.append((bound, FINGERPRINT, items.fingerprint(cur, end)))
            cur = end
        return None if w.emit(lower, ranges) else (lower, lo)

    def _list(
        self, w: _Writer, lower: _Bound, upper: _Bound, lo: int, hi: int
    ) -> tuple[_Bound, int] | None:
        """An IdList of our items in the range, cut at an item if it does not fit."""
        items = self._items
        n = hi - lo
        fit = (w.room() - _MAX_BOUND - 1 - 10) // ID_SIZE
        if n <= fit:
            payload = encode_varint(n) + b"".join(items.ids(lo, hi))
            return None if w.emit(lower, [(upper, ID_LIST, payload)]) else (lower, lo)
        if fit <= 0:
            return lower, lo
        cut = _between(items.key(lo + fit - 1), items.key(lo + fit))
        payload = encode_varint(fit) + b"".join(items.ids(lo, lo + fit))
        if not w.emit(lower, [(cut, ID_LIST, payload)]):
            return lower, lo
        return cut, lo + fit

    def _answer_list(
        self, w: _Writer, lower: _Bound, r: _Range, lo: int, hi: int
    ) -> tuple[_Bound, int] | None:
        """Responder: a Diff against the initiator's IdList, or our own IdList if too big."""
        n = hi - lo
        room = w.room() - _MAX_BOUND - 1 - 20 - (len(r.ids) + 7) // 8
        if (n - len(r.ids)) * ID_SIZE <= room:
            mine = self._items.ids(lo, hi)
            theirs = set(r.ids)
            missing = [m for m in mine if m not in theirs]
            if len(missing) * ID_SIZE <= room:
                bits = _missing_bits(r.ids, set(mine))
                payload = (
                    encode_varint(len(missing))
                    + b"".join(missing)
                    + encode_varint(len(bits))
                    + bits
                )
                if w.emit(lower, [(r.upper, DIFF, payload)]):
                    return None
        return self._list(w, lower, r.upper, lo, hi)


def _missing_bits(ids: tuple[bytes, ...], have: set[bytes]) -> bytes:
    """Bitfield over ``ids``: bit i (``1 << i % 8`` of byte ``i // 8``) set if not in ``have``."""
    bits = bytearray((len(ids) + 7) // 8)
    for i, id_ in enumerate(ids):
        if id_ not in have:
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits)


def _check_bits(bits: bytes, count: int) -> None:
    if len(bits) != (count + 7) // 8 or (count & 7 and bits[-1] >> (count & 7)):
        raise FrameError("diff bitfield does not match the range")
