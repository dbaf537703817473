"""The lab MS's host table, in SQLite: ids and uuids stay stable across restarts.

Queries are tiny and the file is local, so callers in trio run them directly.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from attrs import field, frozen

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS hosts (
    id INTEGER PRIMARY KEY,
    guid TEXT UNIQUE NOT NULL,
    uuid TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    private_ip TEXT,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS host_details (
    host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (host_id, name)
);
"""


@frozen
class HostRecord:
    id: int
    guid: str
    uuid: str
    name: str
    status: str
    private_ip: str | None
    details: dict[str, str] = field(factory=dict)
    last_seen: float | None = None

    @property
    def secured(self) -> bool:
        """The agent's TLS capability, as the MS reads it from host_details."""
        return self.details.get("secured") == "true"


class HostDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)  # explicit transactions
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def upsert_startup(
        self, guid: str, name: str, private_ip: str | None, details: dict[str, str]
    ) -> HostRecord:
        """Record a StartupRoutingCommand: new hosts get an id and a uuid4, known ones keep
        theirs; the details are replaced. The status becomes "Connecting"."""
        now = time.time()
        with self._transaction():
            row = self._db.execute("SELECT id FROM hosts WHERE guid = ?", (guid,)).fetchone()
            if row is None:
                cur = self._db.execute(
                    "INSERT INTO hosts (guid, uuid, name, status, private_ip, last_seen)"
                    " VALUES (?, ?, ?, 'Connecting', ?, ?)",
                    (guid, str(uuid.uuid4()), name, private_ip, now),
                )
                host_id = cur.lastrowid
                assert host_id is not None
            else:
                host_id = int(row[0])
                self._db.execute(
                    "UPDATE hosts SET name = ?, status = 'Connecting', private_ip = ?,"
                    " last_seen = ? WHERE id = ?",
                    (name, private_ip, now, host_id),
                )
            self._db.execute("DELETE FROM host_details WHERE host_id = ?", (host_id,))
            self._db.executemany(
                "INSERT INTO host_details (host_id, name, value) VALUES (?, ?, ?)",
                [(host_id, k, v) for k, v in details.items()],
            )
        record = self.get(host_id)
        assert record is not None
        return record

    def get(self, host: int | str) -> HostRecord | None:
        """By id (int) or guid (str)."""
        column = "id" if isinstance(host, int) else "guid"
        row = self._db.execute(
            "SELECT id, guid, uuid, name, status, private_ip, last_seen FROM hosts"
            f" WHERE {column} = ?",
            (host,),
        ).fetchone()
        return None if row is None else self._record(row)

    def set_status(self, host_id: int, status: str) -> None:
        self._db.execute(
            "UPDATE hosts SET status = ?, last_seen = ? WHERE id = ?",
            (status, time.time(), host_id),
        )

    def mark_all_disconnected(self) -> None:
        """A new MS process over this database: hosts that were Up, Connecting or Alert
        on the last one are Disconnected until they come back."""
        self._db.execute(
            "UPDATE hosts SET status = 'Disconnected' WHERE status IN ('Up', 'Connecting', 'Alert')"
        )

    def touch(self, host_id: int) -> None:
        """The host was heard from (a ping)."""
        self._db.execute("UPDATE hosts SET last_seen = ? WHERE id = ?", (time.time(), host_id))

    def all(self) -> list[HostRecord]:
        rows = self._db.execute(
            "SELECT id, guid, uuid, name, status, private_ip, last_seen FROM hosts ORDER BY id"
        ).fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row: tuple[int, str, str, str, str, str | None, float | None]) -> HostRecord:
        details = dict(
            self._db.execute(
                "SELECT name, value FROM host_details WHERE host_id = ?", (row[0],)
            ).fetchall()
        )
        return HostRecord(
            id=row[0],
            guid=row[1],
            uuid=row[2],
            name=row[3],
            status=row[4],
            private_ip=row[5],
            details=details,
            last_seen=row[6],
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
