"""Where a replica's op log lives: in memory, or the ``crdt_ops`` table.

Rows hold each op's signature (column ``sig``, migration 8: 128 hex characters).
Rows written before migration 8 have none (``NULL``); ``load`` returns those ops
unsigned and ``SharedState`` repairs them on open: it signs its own replica's ops
again (the same device key, so the signature is the one it would have made) and
forgets every other replica's unsigned ops, which then come back, signed, from
their devices by the usual state-vector anti-entropy. A device that never runs a
version with signatures cannot resend its ops; they are lost with it.

Equivocation (migration 9): for a dot a replica signed two different ops for, the op
kept is the one in ``crdt_ops`` and the other is in ``crdt_proofs`` (one row per dot,
the same columns): the proof, kept and sent on so that every device sees both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from kiana.errors import InputError, StoreError
from kiana.sync.crdt_wire import SIG_BYTES, Dot, Op, body, dumps, from_body

if TYPE_CHECKING:
    from kiana.store.db import Conn, Database


class OpStore(Protocol):
    """Where a replica's op log lives: applied ops and held ones (waiting for a gap)."""

    def load(self) -> list[tuple[Op, bool]]:
        """Every stored op and whether it is held, in (replica, seq) order."""
        ...

    def save(self, applied: Sequence[Op], held: Sequence[Op]) -> None:
        """Record ``applied`` (some may be stored as held until now) and new ``held``
        ops, in one transaction."""
        ...

    def repair(self, signed: Sequence[Op], dropped: Sequence[Dot]) -> None:
        """Store the signatures of ``signed`` (stored unsigned until now) and delete the
        ops ``dropped``, in one transaction."""
        ...

    def load_proofs(self) -> list[Op]:
        """The other op of every equivocated dot, in (replica, seq) order."""
        ...

    def equivocation(self, winner: Op | None, other: Op) -> None:
        """Keep ``other`` as the proof for its dot and, if ``winner`` is given, store it
        as the op of that dot (stored already, held or not) instead: one transaction."""
        ...


class MemoryOpStore:
    """An op log in a dict: survives a ``SharedState`` but not the process."""

    def __init__(self) -> None:
        self._ops: dict[Dot, tuple[Op, bool]] = {}
        self._proofs: dict[Dot, Op] = {}

    def load(self) -> list[tuple[Op, bool]]:
        return [self._ops[dot] for dot in sorted(self._ops)]

    def save(self, applied: Sequence[Op], held: Sequence[Op]) -> None:
        for op in applied:
            self._ops[op.dot] = (op, False)
        for op in held:
            self._ops.setdefault(op.dot, (op, True))

    def repair(self, signed: Sequence[Op], dropped: Sequence[Dot]) -> None:
        for op in signed:
            if op.dot in self._ops:
                self._ops[op.dot] = (op, self._ops[op.dot][1])
        for dot in dropped:
            self._ops.pop(dot, None)

    def load_proofs(self) -> list[Op]:
        return [self._proofs[dot] for dot in sorted(self._proofs)]

    def equivocation(self, winner: Op | None, other: Op) -> None:
        if winner is not None:
            self._ops[winner.dot] = (winner, self._ops[winner.dot][1])
        self._proofs[other.dot] = other


_SAVE_APPLIED = (
    "INSERT INTO crdt_ops (replica, seq, lamport, op, held, sig) VALUES (?, ?, ?, ?, 0, ?)"
    " ON CONFLICT (replica, seq) DO UPDATE SET held = 0"
)
_SAVE_HELD = (
    "INSERT INTO crdt_ops (replica, seq, lamport, op, held, sig) VALUES (?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (replica, seq) DO NOTHING"
)
_SIGN = "UPDATE crdt_ops SET sig = ? WHERE replica = ? AND seq = ? AND sig IS NULL"
_DROP = "DELETE FROM crdt_ops WHERE replica = ? AND seq = ?"
_REPLACE = "UPDATE crdt_ops SET lamport = ?, op = ?, sig = ? WHERE replica = ? AND seq = ?"
_PROOF = (
    "INSERT INTO crdt_proofs (replica, seq, lamport, op, sig) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (replica, seq) DO UPDATE"
    " SET lamport = excluded.lamport, op = excluded.op, sig = excluded.sig"
)


def _row(op: Op) -> tuple[str, int, int, str, str | None]:
    sig = op.sig.hex() if op.sig else None
    return (op.replica, op.seq, op.lamport, dumps(body(op)), sig)


def _op(table: str, replica: str, seq: object, lamport: object, text: str, sig: object) -> Op:
    try:
        raw_sig = b"" if sig is None else bytes.fromhex(str(sig))
        if sig is not None and len(raw_sig) != SIG_BYTES:
            raise ValueError("a signature of the wrong length")
        return from_body(replica, int(str(seq)), int(str(lamport)), json.loads(text), raw_sig)
    except (ValueError, RecursionError, InputError) as exc:
        raise StoreError(f"corrupt op {seq} of replica {replica} in {table}") from exc


class SqlOpStore:
    """The ``crdt_ops`` and ``crdt_proofs`` tables (migrations 6, 8, 9) of a migrated
    ``Database`` the caller owns."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self) -> list[tuple[Op, bool]]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT replica, seq, lamport, op, held, sig FROM crdt_ops ORDER BY replica, seq"
            )
        )
        return [
            (_op("crdt_ops", replica, seq, lamport, text, sig), bool(held))
            for replica, seq, lamport, text, held, sig in rows
        ]

    def save(self, applied: Sequence[Op], held: Sequence[Op]) -> None:
        def write(conn: Conn) -> None:
            conn.executemany(_SAVE_APPLIED, [_row(op) for op in applied])
            conn.executemany(_SAVE_HELD, [_row(op) for op in held])

        if applied or held:
            self.db.write(write)

    def repair(self, signed: Sequence[Op], dropped: Sequence[Dot]) -> None:
        def write(conn: Conn) -> None:
            conn.executemany(_SIGN, [(op.sig.hex(), op.replica, op.seq) for op in signed])
            conn.executemany(_DROP, list(dropped))

        if signed or dropped:
            self.db.write(write)

    def load_proofs(self) -> list[Op]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT replica, seq, lamport, op, sig FROM crdt_proofs ORDER BY replica, seq"
            )
        )
        return [_op("crdt_proofs", *row) for row in rows]

    def equivocation(self, winner: Op | None, other: Op) -> None:
        def write(conn: Conn) -> None:
            if winner is not None:
                replica, seq, lamport, text, sig = _row(winner)
                conn.execute(_REPLACE, (lamport, text, sig, replica, seq))
            conn.execute(_PROOF, _row(other))

        self.db.write(write)


__all__ = ["MemoryOpStore", "OpStore", "SqlOpStore"]
