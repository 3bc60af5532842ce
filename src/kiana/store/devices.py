"""Mind metadata and the devices table, as part of ``BlockStore``.

Membership, revocation, last-seen times and the signing-key lookup every
verification uses (``device_key``, cached until the devices change). Synchronous
and thread-safe like the rest of the store: call it off the event loop.
"""

from __future__ import annotations

from kiana.store.db import Conn, Database
from kiana.store.types import Device


class MetaAndDevices:
    """Mixed into ``BlockStore``, which sets ``db`` and ``_keys``."""

    db: Database
    _keys: dict[str, bytes] | None

    def set_meta(self, key: str, value: str) -> None:
        def write(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO mind_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        self.db.write(write)

    def get_meta(self, key: str) -> str | None:
        row = self.db.read(lambda c: c.one("SELECT value FROM mind_meta WHERE key = ?", (key,)))
        return str(row[0]) if row else None

    def add_device(self, device: Device) -> None:
        def write(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO devices (device_id, sign_key, box_key, role, person, name, added, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET"
                " role = excluded.role, name = excluded.name, record = excluded.record",
                (
                    device.device_id,
                    device.sign_key.hex(),
                    device.box_key.hex(),
                    device.role,
                    device.person,
                    device.name,
                    device.added,
                    device.record,
                ),
            )

        self.db.write(write)
        self._keys = None

    def devices(self) -> list[Device]:
        rows = self.db.read(
            lambda c: c.all(
                "SELECT device_id, sign_key, box_key, role, person, name, added, record,"
                " revoked, last_seen FROM devices ORDER BY added, device_id"
            )
        )
        return [
            Device(
                r[0],
                bytes.fromhex(r[1]),
                bytes.fromhex(r[2]),
                r[3],
                r[4],
                r[5],
                int(r[6]),
                r[7],
                None if r[8] is None else int(r[8]),
                None if r[9] is None else int(r[9]),
            )
            for r in rows
        ]

    def device(self, device_id: str) -> Device | None:
        for d in self.devices():
            if d.device_id == device_id:
                return d
        return None

    def revoke_device(self, device_id: str, *, at: int, record: str) -> bool:
        """Mark a device revoked (keeps its keys so its old blocks still verify)."""

        def write(conn: Conn) -> bool:
            cur = conn.execute(
                "UPDATE devices SET revoked = ?, revoke_record = ?"
                " WHERE device_id = ? AND revoked IS NULL",
                (at, record, device_id),
            )
            return bool(cur.rowcount)

        changed = self.db.write(write)
        self._keys = None
        return changed

    def touch_device(self, device_id: str, at: int) -> None:
        self.db.write(
            lambda c: c.execute(
                "UPDATE devices SET last_seen = ? WHERE device_id = ?"
                " AND (last_seen IS NULL OR last_seen < ?)",
                (at, device_id, at),
            )
        )

    def device_key(self, device_id: str) -> bytes | None:
        """Signing key of a known device: the ``KeyLookup`` used for verification."""
        keys = self._keys
        if keys is None:
            keys = {d.device_id: d.sign_key for d in self.devices()}
            self._keys = keys
        return keys.get(device_id)
