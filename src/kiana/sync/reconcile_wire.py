"""The wire format of range-based set reconciliation (``reconcile.py``), sans-I/O.

This module owns the bytes: varints, range bounds, parsing a message into
ranges (:func:`parse`) and writing one under the frame limit (:class:`Writer`),
and the Diff bitfield. What to say in a message is decided by
:class:`kiana.sync.reconcile.Reconciler`.

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

from dataclasses import dataclass

from kiana.errors import FrameError

__all__ = [
    "DIFF",
    "FINGERPRINT",
    "FINGERPRINT_SIZE",
    "ID_LIST",
    "ID_SIZE",
    "INF",
    "INF_TS",
    "KEY_SIZE",
    "MAX_BOUND",
    "MAX_FP_RANGE",
    "MAX_SKIP",
    "MAX_TIMESTAMP",
    "PROTOCOL_VERSION",
    "RESERVE",
    "SKIP",
    "ZERO",
    "ZERO_KEY",
    "Bound",
    "Range",
    "Writer",
    "between",
    "check_bits",
    "decode_varint",
    "encode_varint",
    "missing_bits",
    "parse",
]

PROTOCOL_VERSION = 0x01
ID_SIZE = 32
FINGERPRINT_SIZE = 16
MAX_TIMESTAMP = 2**64 - 2  # 2**64 - 1 is the infinity bound
INF_TS = 2**64 - 1

SKIP, FINGERPRINT, ID_LIST, DIFF = 0, 1, 2, 3

KEY_SIZE = 8 + ID_SIZE
ZERO_KEY = bytes(KEY_SIZE)
MAX_BOUND = 10 + 1 + ID_SIZE  # ts varint, prefix length, prefix
MAX_SKIP = MAX_BOUND + 1
RESERVE = MAX_SKIP + MAX_BOUND + 1 + FINGERPRINT_SIZE  # skip + the closing fingerprint range
MAX_FP_RANGE = MAX_BOUND + 1 + FINGERPRINT_SIZE


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


# -- bounds and messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    ts: int
    prefix: bytes

    @property
    def key(self) -> bytes:
        if self.ts == INF_TS:
            return b"\xff" * 8 + bytes(ID_SIZE)
        return self.ts.to_bytes(8, "big") + self.prefix + bytes(ID_SIZE - len(self.prefix))


ZERO = Bound(0, b"")
INF = Bound(INF_TS, b"")


def between(prev: bytes, cur: bytes) -> Bound:
    """The shortest bound above item key ``prev`` and at or below item key ``cur``."""
    ts = int.from_bytes(cur[:8], "big")
    if prev[:8] != cur[:8]:
        return Bound(ts, b"")
    n = 8
    while prev[n] == cur[n]:
        n += 1
    return Bound(ts, cur[8 : n + 1])


@dataclass(frozen=True, slots=True)
class Range:
    upper: Bound
    mode: int
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()
    bits: bytes = b""


def parse(message: bytes, *, limit: int, diff_allowed: bool) -> list[Range]:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise FrameError("message must be bytes")
    data = bytes(message)
    if not data:
        raise FrameError("empty message")
    if len(data) > limit:
        raise FrameError("message longer than the frame limit")
    if data[0] != PROTOCOL_VERSION:
        raise FrameError(f"unsupported reconciliation version {data[0]}")
    pos, end, last_ts, prev_key = 1, len(data), 0, ZERO_KEY
    out: list[Range] = []
    while pos < end:
        code, pos = decode_varint(data, pos)
        plen, pos = decode_varint(data, pos)
        if plen > ID_SIZE or pos + plen > end:
            raise FrameError("bad bound prefix")
        prefix, pos = data[pos : pos + plen], pos + plen
        if last_ts == INF_TS:
            raise FrameError("range after infinity")
        if code == 0:
            if plen:
                raise FrameError("infinity bound with an id prefix")
            ts = INF_TS
        else:
            ts = last_ts + code - 1
            if ts > MAX_TIMESTAMP:
                raise FrameError("bound timestamp out of range")
        bound = Bound(ts, prefix)
        key = bound.key
        if key <= prev_key:
            raise FrameError("bounds not increasing")
        last_ts, prev_key = ts, key
        mode, pos = decode_varint(data, pos)
        if mode == SKIP:
            out.append(Range(bound, SKIP))
        elif mode == FINGERPRINT:
            if pos + FINGERPRINT_SIZE > end:
                raise FrameError("truncated fingerprint")
            out.append(Range(bound, FINGERPRINT, data[pos : pos + FINGERPRINT_SIZE]))
            pos += FINGERPRINT_SIZE
        elif mode == ID_LIST or (mode == DIFF and diff_allowed):
            ids, pos = _read_ids(data, pos)
            bits = b""
            if mode == DIFF:
                m, pos = decode_varint(data, pos)
                if pos + m > end:
                    raise FrameError("truncated bitfield")
                bits, pos = data[pos : pos + m], pos + m
            out.append(Range(bound, mode, ids=ids, bits=bits))
        else:
            raise FrameError(f"unknown range mode {mode}")
    return out


def _read_ids(data: bytes, pos: int) -> tuple[tuple[bytes, ...], int]:
    n, pos = decode_varint(data, pos)
    if n > (len(data) - pos) // ID_SIZE:
        raise FrameError("truncated id list")
    stop = pos + n * ID_SIZE
    return tuple(data[i : i + ID_SIZE] for i in range(pos, stop, ID_SIZE)), stop


class Writer:
    """Builds one outgoing message, range by range, never past the frame limit."""

    __slots__ = ("buf", "last_ts", "limit", "upper")

    def __init__(self, limit: int) -> None:
        self.buf = bytearray((PROTOCOL_VERSION,))
        self.limit = limit
        self.last_ts = 0
        self.upper = ZERO_KEY  # key of the last upper bound written

    def _bound(self, out: bytearray, b: Bound) -> None:
        if b.ts == INF_TS:
            out += b"\x00\x00"
        else:
            out += encode_varint(b.ts - self.last_ts + 1)
            out += encode_varint(len(b.prefix))
            out += b.prefix
        self.last_ts = b.ts
        self.upper = b.key

    def room(self) -> int:
        """Bytes left for ranges (beyond a leading Skip) before the closing reserve."""
        return self.limit - RESERVE - len(self.buf) - MAX_SKIP

    def emit(self, lower: Bound, ranges: list[tuple[Bound, int, bytes]]) -> bool:
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
        if len(self.buf) + len(chunk) + RESERVE > self.limit:
            self.last_ts, self.upper = saved
            return False
        self.buf += chunk
        return True

    def close(self, lower: Bound, upper: Bound, fingerprint: bytes) -> None:
        """End the message with a Fingerprint over ``[lower, upper)``; always fits.

        ``upper`` is where the message being answered ended (infinity for the first
        message): ranges past it were settled earlier and must not be opened again.
        """
        self.limit += RESERVE
        ok = self.emit(lower, [(upper, FINGERPRINT, fingerprint)])
        self.limit -= RESERVE
        assert ok

    def done(self) -> bytes:
        return bytes(self.buf)


def missing_bits(ids: tuple[bytes, ...], have: set[bytes]) -> bytes:
    """Bitfield over ``ids``: bit i (``1 << i % 8`` of byte ``i // 8``) set if not in ``have``."""
    bits = bytearray((len(ids) + 7) // 8)
    for i, id_ in enumerate(ids):
        if id_ not in have:
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits)


def check_bits(bits: bytes, count: int) -> None:
    if len(bits) != (count + 7) // 8 or (count & 7 and bits[-1] >> (count & 7)):
        raise FrameError("diff bitfield does not match the range")
