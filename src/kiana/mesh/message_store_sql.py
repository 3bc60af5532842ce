"""``SqlMessageStore``: the ``MessageStore`` of ``message_store.py`` in the ``mesh_*``
tables of migration 5, on SQLite and PostgreSQL; every method is one transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from kiana.mesh.envelope import Envelope
from kiana.mesh.message_store import (
    INBOX_HELD,
    INBOX_READY,
    Delivered,
    DeliverResult,
    OutboxEntry,
    Sealer,
    _min,
)
from kiana.store.db import Conn, Database

_OUT_COLS = "msg_id, peer, channel, seq, created, expires, attempts, next_try, envelope"
_IN_COLS = "i.msg_id, i.sender, i.channel, i.seq, i.body, i.created, i.received"


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    m, p, c, s, cr, ex, a, n, env = row
    return OutboxEntry(str(m), str(p), str(c), int(s), int(cr), int(ex), int(a), int(n), bytes(env))


def _delivered(row: tuple[Any, ...]) -> Delivered:
    m, snd, c, s, body, cr, rc = row
    return Delivered(str(m), str(snd), str(c), int(s), bytes(body), int(cr), int(rc))


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _counter(conn: Conn, peer: str, channel: str, direction: str) -> int:
    row = conn.one(
        "SELECT next_seq FROM mesh_channels WHERE peer = ? AND channel = ? AND direction = ?",
        (peer, channel, direction),
    )
    return int(row[0]) if row else 1


def _set_counter(conn: Conn, peer: str, channel: str, direction: str, value: int) -> None:
    conn.execute(
        "INSERT INTO mesh_channels (peer, channel, direction, next_seq) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (peer, channel, direction) DO UPDATE SET next_seq = excluded.next_seq",
        (peer, channel, direction, value),
    )


class SqlMessageStore:
    """The ``mesh_*`` tables of a migrated ``Database`` (which the caller owns)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_outgoing(
        self,
        msg_id: str,
        peer: str,
        channel: str,
        *,
        ordered: bool,
        created: int,
        expires: int,
        seal: Sealer,
    ) -> OutboxEntry:
        def write(conn: Conn) -> OutboxEntry:
            seq, exp = 0, expires
            if ordered:
                seq = _counter(conn, peer, channel, "out")
                row = conn.one(
                    "SELECT MAX(expires) FROM mesh_outbox WHERE peer = ? AND channel = ? AND seq > 0",
                    (peer, channel),
                )
                if row and row[0] is not None:
                    exp = max(exp, int(row[0]))
                _set_counter(conn, peer, channel, "out", seq + 1)
            entry = OutboxEntry(
                msg_id, peer, channel, seq, created, exp, 0, created, seal(seq, exp)
            )
            conn.execute(
                f"INSERT INTO mesh_outbox ({_OUT_COLS}) VALUES ({_marks(9)})",
                (msg_id, peer, channel, seq, created, exp, 0, created, entry.envelope),
            )
            return entry

        return self.db.write(write)

    def due(self, peers: Collection[str], now: int, limit: int) -> list[OutboxEntry]:
        if not peers:
            return []
        sql = (
            f"SELECT {_OUT_COLS} FROM mesh_outbox WHERE peer IN ({_marks(len(peers))})"
            " AND next_try <= ? AND expires > ? ORDER BY next_try, created, seq, msg_id LIMIT ?"
        )
        rows = self.db.read(lambda c: c.all(sql, (*peers, now, now, limit)))
        return [_entry(r) for r in rows]

    def record_attempts(self, tries: Sequence[tuple[str, int]]) -> None:
        if tries:
            self.db.write(
                lambda c: c.executemany(
                    "UPDATE mesh_outbox SET attempts = attempts + 1, next_try = ? WHERE msg_id = ?",
                    [(n, m) for m, n in tries],
                )
            )

    def reschedule(self, peer: str, now: int) -> None:
        self.db.write(
            lambda c: c.execute(
                "UPDATE mesh_outbox SET next_try = ? WHERE peer = ? AND next_try > ?",
                (now, peer, now),
            )
        )

    def remove_acked(self, peer: str, msg_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(msg_ids))

        def write(conn: Conn) -> list[str]:
            found = conn.all(
                f"SELECT msg_id FROM mesh_outbox WHERE peer = ? AND msg_id IN ({_marks(len(ids))})",
                (peer, *ids),
            )
            gone = {str(r[0]) for r in found}
            conn.executemany("DELETE FROM mesh_outbox WHERE msg_id = ?", [(m,) for m in gone])
            return [m for m in ids if m in gone]

        return self.db.write(write) if ids else []

    def expire_outgoing(self, now: int) -> list[tuple[str, str]]:
        def write(conn: Conn) -> list[tuple[str, str]]:
            rows = conn.all(
                "SELECT msg_id, peer FROM mesh_outbox WHERE expires <= ? ORDER BY expires, msg_id",
                (now,),
            )
            conn.execute("DELETE FROM mesh_outbox WHERE expires <= ?", (now,))
            return [(str(m), str(p)) for m, p in rows]

        return self.db.write(write)

    def next_outgoing(self, peers: Collection[str]) -> int | None:
        def read(conn: Conn) -> int | None:
            row = conn.one("SELECT MIN(expires) FROM mesh_outbox")
            expiry = int(row[0]) if row and row[0] is not None else None
            retry = None
            if peers:
                row = conn.one(
                    f"SELECT MIN(next_try) FROM mesh_outbox WHERE peer IN ({_marks(len(peers))})",
                    tuple(peers),
                )
                retry = int(row[0]) if row and row[0] is not None else None
            return _min(expiry, retry)

        return self.db.read(read)

    def outbox(self, peer: str | None = None) -> list[OutboxEntry]:
        where, params = ("WHERE peer = ?", (peer,)) if peer is not None else ("", ())
        sql = f"SELECT {_OUT_COLS} FROM mesh_outbox {where} ORDER BY created, seq, msg_id"
        return [_entry(r) for r in self.db.read(lambda c: c.all(sql, params))]

    def deliver(self, env: Envelope, now: int) -> DeliverResult:
        def write(conn: Conn) -> DeliverResult:
            if conn.one(
                "SELECT 1 FROM mesh_seen WHERE sender = ? AND msg_id = ?", (env.sender, env.msg_id)
            ):
                return DeliverResult("duplicate")
            expected = _counter(conn, env.sender, env.channel, "in")
            if env.ordered and env.seq < expected:
                return DeliverResult("stale")
            if conn.one("SELECT 1 FROM mesh_inbox WHERE msg_id = ?", (env.msg_id,)):
                return DeliverResult("conflict")
            conn.execute(
                "INSERT INTO mesh_seen (sender, msg_id, expires) VALUES (?, ?, ?)",
                (env.sender, env.msg_id, env.expires),
            )
            held = env.ordered and env.seq > expected
            conn.execute(
                "INSERT INTO mesh_inbox (msg_id, sender, channel, seq, created, received, body,"
                f" consumed) VALUES ({_marks(8)})",
                (
                    env.msg_id,
                    env.sender,
                    env.channel,
                    env.seq,
                    env.created,
                    now,
                    env.body,
                    INBOX_HELD if held else INBOX_READY,
                ),
            )
            if held:
                return DeliverResult("held")
            item = Delivered(
                env.msg_id, env.sender, env.channel, env.seq, env.body, env.created, now
            )
            if not env.ordered:
                return DeliverResult("delivered", (item,))
            released = self._promote(conn, env.sender, env.channel, env.seq + 1, now)
            return DeliverResult("delivered", (item, *released))

        return self.db.write(write)

    @staticmethod
    def _promote(conn: Conn, sender: str, channel: str, expected: int, now: int) -> list[Delivered]:
        """Mark held rows from ``expected`` on without a gap ready; store the new counter."""
        rows = conn.all(
            f"SELECT {_IN_COLS} FROM mesh_inbox i WHERE i.sender = ? AND i.channel = ?"
            " AND i.consumed = ? AND i.seq >= ? ORDER BY i.seq",
            (sender, channel, INBOX_HELD, expected),
        )
        out: list[Delivered] = []
        for row in rows:
            item = _delivered(row)
            if item.seq != expected:
                break
            out.append(replace(item, received=now))
            expected += 1
        conn.executemany(
            "UPDATE mesh_inbox SET consumed = ?, received = ? WHERE msg_id = ?",
            [(INBOX_READY, now, d.msg_id) for d in out],
        )
        _set_counter(conn, sender, channel, "in", expected)
        return out

    _HEADS = (
        "SELECT i.sender, i.channel, i.seq, s.expires FROM mesh_inbox i"
        " JOIN mesh_seen s ON s.sender = i.sender AND s.msg_id = i.msg_id"
        " WHERE i.consumed = ? AND i.seq = (SELECT MIN(h.seq) FROM mesh_inbox h"
        " WHERE h.sender = i.sender AND h.channel = i.channel AND h.consumed = ?)"
    )

    def release_gaps(self, now: int) -> list[Delivered]:
        def write(conn: Conn) -> list[Delivered]:
            out: list[Delivered] = []
            while True:
                heads = conn.all(
                    self._HEADS + " AND s.expires <= ? ORDER BY i.sender, i.channel",
                    (INBOX_HELD, INBOX_HELD, now),
                )
                if not heads:
                    return out
                for sender, channel, seq, _exp in heads:
                    out.extend(self._promote(conn, str(sender), str(channel), int(seq), now))

        return self.db.write(write)

    def next_release(self) -> int | None:
        row = self.db.read(
            lambda c: c.one(
                f"SELECT MIN(q.expires) FROM ({self._HEADS}) q", (INBOX_HELD, INBOX_HELD)
            )
        )
        return int(row[0]) if row and row[0] is not None else None

    def pending_inbox(self, limit: int) -> list[Delivered]:
        sql = (
            f"SELECT {_IN_COLS} FROM mesh_inbox i WHERE i.consumed = ?"
            " ORDER BY i.received, i.sender, i.channel, i.seq, i.msg_id LIMIT ?"
        )
        return [_delivered(r) for r in self.db.read(lambda c: c.all(sql, (INBOX_READY, limit)))]

    def held_count(self) -> int:
        row = self.db.read(
            lambda c: c.one("SELECT COUNT(*) FROM mesh_inbox WHERE consumed = ?", (INBOX_HELD,))
        )
        return int(row[0]) if row else 0

    def consume(self, msg_id: str) -> None:
        self.db.write(
            lambda c: c.execute(
                "DELETE FROM mesh_inbox WHERE msg_id = ? AND consumed = ?", (msg_id, INBOX_READY)
            )
        )

    def prune_seen(self, now: int) -> int:
        def write(conn: Conn) -> int:
            cur = conn.execute(
                "DELETE FROM mesh_seen WHERE expires <= ? AND NOT EXISTS (SELECT 1 FROM"
                " mesh_inbox i WHERE i.sender = mesh_seen.sender AND i.msg_id = mesh_seen.msg_id"
                " AND i.consumed = ?)",
                (now, INBOX_HELD),
            )
            return max(cur.rowcount, 0)

        return self.db.write(write)
