"""A kiosk's persistent sync state: a small SQLite file beside its releases.

Holds what must survive a restart but does not belong in the catalog: the
highest manifest sequence accepted (replay protection), the latest manifest
itself, out-of-order deltas waiting for their base, and enrollments (and
withdrawals of enrollments) not yet acknowledged by the broker. The catalog's own version is the truth for "what
is applied"; it is committed in the same transaction as the rows.

The file is versioned like the catalog (`edge_app.core.sqlite`): releases before
versioning left it at version 0 with the tables of version 1, which only
creates what is missing, so those files are adopted in place; a file from a
newer release is a SyncError rather than being misread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shelfsight.edge_app.core.errors import SyncError
from shelfsight.edge_app.core.sqlite import Migration, open_database, statements

# Append only.
MIGRATIONS = (
    Migration(
        1,
        "create the tables",
        statements(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS pending (base INTEGER PRIMARY KEY, target INTEGER NOT NULL, "
            "envelope BLOB NOT NULL, received REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "payload BLOB NOT NULL, created REAL NOT NULL)",
        ),
    ),
)

# More pending deltas than this means something is badly wrong; the snapshot is cheaper.
MAX_PENDING = 64


class SyncState:
    """Not thread-safe: owned by the kiosk's sync worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = open_database(
            self.path,
            MIGRATIONS,
            what="sync state",
            error=SyncError,
            adopt_unversioned=True,
            # FULL: an accepted manifest sequence (replay protection) survives power loss.
            synchronous="FULL",
            busy_timeout_s=5.0,  # what it always had: the sync worker is the file's one writer
            autocommit=True,
        )

    def close(self) -> None:
        self._db.close()

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- out-of-order deltas ------------------------------------------------
    def hold(self, base: int, target: int, envelope: bytes) -> bool:
        """Keep a delta until its base is applied. False if the pending area is full."""
        count = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        if count >= MAX_PENDING:
            return False
        self._db.execute(
            "INSERT OR REPLACE INTO pending (base, target, envelope, received) VALUES (?, ?, ?, ?)",
            (base, target, envelope, time.time()),
        )
        return True

    def take(self, base: int) -> bytes | None:
        row = self._db.execute("SELECT envelope FROM pending WHERE base = ?", (base,)).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM pending WHERE base = ?", (base,))
        return bytes(row[0])

    def drop_pending(self, *, below: int | None = None) -> None:
        """Forget held deltas (all of them, or those that no longer lead anywhere new)."""
        if below is None:
            self._db.execute("DELETE FROM pending")
        else:
            self._db.execute("DELETE FROM pending WHERE target <= ?", (below,))

    def oldest_pending(self) -> float | None:
        row = self._db.execute("SELECT MIN(received) FROM pending").fetchone()
        return None if row[0] is None else float(row[0])

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])

    # -- messages to send -----------------------------------------------------
    def queue(self, topic: str, payload: bytes) -> None:
        self._db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)", (topic, payload, time.time()))

    def outbox(self) -> list[tuple[int, str, bytes]]:
        rows = self._db.execute("SELECT id, topic, payload FROM outbox ORDER BY id LIMIT 100").fetchall()
        return [(int(i), str(t), bytes(p)) for i, t, p in rows]

    def sent(self, item_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def queued_for(self, topic: str, product_id: str) -> list[tuple[int, bytes]]:
        """Messages on `topic` still waiting for the broker whose JSON names `product_id`, oldest first.

        SQLite reads the id out of each payload, so the queue's (up to 1 MB) enrollments are not
        loaded to find one.
        """
        rows = self._db.execute(
            "SELECT id, payload FROM outbox WHERE topic = ? AND CASE WHEN json_valid(CAST(payload AS TEXT)) "
            "THEN json_extract(CAST(payload AS TEXT), '$.product_id') END = ? ORDER BY id",
            (topic, product_id),
        ).fetchall()
        return [(int(i), bytes(p)) for i, p in rows]

    def unqueue(self, item_id: int) -> bool:
        """Take a message back before the broker has it; False if it is no longer queued."""
        return self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,)).rowcount > 0
