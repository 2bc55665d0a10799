"""A kiosk's sync state and HQ's enrollment inbox written by the release before versioning open and upgrade in place.

The DDL below is what that release ran on every open (a CREATE TABLE IF NOT EXISTS script, no
`user_version`), frozen here as the file such an installation has on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.sync.messages import Withdrawal
from shelfsight.edge_app.core.errors import InputError, SyncError
from shelfsight.edge_app.core.sqlite import user_version
from shelfsight.edge_app.kiosk.updates.state import SyncState

PREVIOUS_STATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (base INTEGER PRIMARY KEY, target INTEGER NOT NULL,
                                    envelope BLOB NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, created REAL NOT NULL);
INSERT INTO meta VALUES ('manifest_seq', '41');
INSERT INTO pending VALUES (7, 8, x'0102', 1700000000.0);
INSERT INTO outbox (topic, payload, created) VALUES ('shelfsight/enroll/k1', x'7b7d', 1700000000.0);
"""
PREVIOUS_INBOX = """
CREATE TABLE IF NOT EXISTS enrollments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kiosk_id TEXT NOT NULL, product_id TEXT NOT NULL,
    name TEXT NOT NULL, frames INTEGER NOT NULL, payload TEXT NOT NULL, received REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', note TEXT NOT NULL DEFAULT '');
INSERT INTO enrollments (kiosk_id, product_id, name, frames, payload, received)
    VALUES ('k1', 'tea', 'Green tea', 1, '{"kiosk_id": "k1", "product_id": "tea", "name": "Green tea",
            "frames": [{"embedding": [0.6, 0.8], "fingerprint": "m1"}]}', 1700000000.0);
"""
TAUGHT_JAM = (
    '{"kiosk_id": "k1", "product_id": "jam", "name": "Jam", "created": 1700000099.987654, '
    '"frames": [{"embedding": [0.6, 0.8], "fingerprint": "m1"}]}'
)


def previous_release_file(path: Path, script: str) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(script)
    conn.close()
    return path


def version_of(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return user_version(conn)


def set_version(path: Path, version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {version}")


def test_sync_state_of_the_previous_release_is_upgraded_in_place(tmp_path: Path) -> None:
    path = previous_release_file(tmp_path / "sync_state.db", PREVIOUS_STATE)
    assert version_of(path) == 0
    state = SyncState(path)
    try:
        assert state.get("manifest_seq") == 41  # replay protection survives the upgrade
        assert state.take(7) == b"\x01\x02" and state.outbox() == [(1, "shelfsight/enroll/k1", b"{}")]
        state.set("manifest_seq", 42)
    finally:
        state.close()
    assert version_of(path) == 1
    again = SyncState(path)
    assert again.get("manifest_seq") == 42
    again.close()


def test_sync_state_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sync_state.db"
    SyncState(path).close()
    set_version(path, 2)
    with pytest.raises(SyncError, match="sync_state.db: schema version 2 is newer than this shelfsight supports"):
        SyncState(path)


def test_enrollment_inbox_of_the_previous_release_is_upgraded_in_place(tmp_path: Path) -> None:
    path = previous_release_file(tmp_path / "inbox.db", PREVIOUS_INBOX)
    with EnrollmentInbox(path) as inbox:
        [entry] = inbox.entries("pending")
        assert (entry.id, entry.kiosk_id, entry.product_id, entry.frames) == (1, "k1", "tea", 1)
        inbox.reject(entry.id, "duplicate")
    assert version_of(path) == 2
    with EnrollmentInbox(path) as inbox:
        assert [(e.status, e.note) for e in inbox.entries()] == [("rejected", "duplicate")]


def test_an_inbox_of_schema_1_gains_withdrawals_and_its_pending_entries_can_be_withdrawn(tmp_path: Path) -> None:
    """Schema 1 is the versioned inbox of the releases before withdrawals: the table above at user_version 1."""
    path = previous_release_file(tmp_path / "inbox.db", PREVIOUS_INBOX)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO enrollments (kiosk_id, product_id, name, frames, payload, received) VALUES (?, ?, ?, ?, ?, ?)",
            ("k1", "jam", "Jam", 1, TAUGHT_JAM, 1700000100.0),
        )
    set_version(path, 1)
    with EnrollmentInbox(path) as inbox:
        assert version_of(path) == 2
        assert [(e.product_id, e.status) for e in inbox.entries()] == [("tea", "pending"), ("jam", "pending")]
        undone = Withdrawal(kiosk_id="k1", product_id="jam", enrollment_created=1700000099.987654)
        assert inbox.withdraw(undone) == [2]
        # "tea" carries no `created` (0.0, as the model reads it): withdrawn by that stamp only.
        assert inbox.withdraw(Withdrawal(kiosk_id="k1", product_id="tea", enrollment_created=0.0)) == [1]
    with EnrollmentInbox(path) as inbox:  # a state, not a deletion: photos and all stay for the record
        assert [(e.product_id, e.status) for e in inbox.entries()] == [("tea", "withdrawn"), ("jam", "withdrawn")]
        assert inbox.enrollment(2).created == 1700000099.987654 and len(inbox.withdrawals()) == 2


def test_enrollment_inbox_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    EnrollmentInbox(path).close()
    set_version(path, 5)
    with pytest.raises(InputError, match="inbox.db: schema version 5 is newer than this shelfsight supports"):
        EnrollmentInbox(path)
