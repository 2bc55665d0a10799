"""`edge_app.core.sqlite`: pragmas, numbered migrations, in-place upgrades, newer files refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shelfsight.edge_app.core.errors import CatalogError, SyncError
from shelfsight.edge_app.core.sqlite import Migration, migrate, open_database, statements, user_version

V1 = Migration(1, "create the notes", statements("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"))
V2 = Migration(2, "add a notes index", statements("CREATE INDEX notes_text ON notes (text)"))
V3 = Migration(3, "add tags", statements("CREATE TABLE tags (note INTEGER NOT NULL, tag TEXT NOT NULL)"))


def names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def test_a_new_file_gets_every_step_and_the_pragmas(tmp_path: Path) -> None:
    conn = open_database(
        tmp_path / "new.db",
        [V1, V2],
        what="notes",
        error=SyncError,
        synchronous="FULL",
        busy_timeout_s=7.5,
        foreign_keys=True,
    )
    try:
        assert user_version(conn) == 2 and names(conn) == {"notes", "notes_text"}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7500
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        conn.close()


def test_an_older_file_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    open_database(path, [V1], what="notes", error=SyncError).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO notes (text) VALUES ('kept')")
    conn = open_database(path, [V1, V2, V3], what="notes", error=SyncError)
    try:
        assert user_version(conn) == 3 and {"notes_text", "tags"} <= names(conn)
        assert conn.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    finally:
        conn.close()
    applied: list[int] = []
    counting = [Migration(m.version, m.summary, lambda c, v=m.version: applied.append(v)) for m in (V1, V2, V3)]
    open_database(path, counting, what="notes", error=SyncError).close()
    assert applied == []  # an up-to-date file runs no step again


def test_a_file_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    open_database(path, [V1, V2, V3], what="notes", error=SyncError).close()
    with pytest.raises(
        SyncError, match=r"newer.db: schema version 3 is newer than this shelfsight supports \(2\); upgrade"
    ):
        open_database(path, [V1, V2], what="notes", error=SyncError)
    with sqlite3.connect(path) as conn:
        assert user_version(conn) == 3
    with pytest.raises(CatalogError, match="newer than this shelfsight"):  # the caller's own domain error
        open_database(path, [V1], what="catalog", error=CatalogError)


def test_unversioned_files_with_tables_are_adopted_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "unversioned.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        conn.execute("INSERT INTO notes (text) VALUES ('before versioning')")
    with pytest.raises(CatalogError, match="not a shelfsight catalog"):
        open_database(path, [V1], what="catalog", error=CatalogError)
    adopt = Migration(1, "create the notes", statements("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY)"))
    conn = open_database(path, [adopt], what="notes", error=SyncError, adopt_unversioned=True)
    try:
        assert user_version(conn) == 1 and conn.execute("SELECT text FROM notes").fetchall() == [("before versioning",)]
    finally:
        conn.close()


def test_a_failing_step_leaves_neither_its_changes_nor_its_number(tmp_path: Path) -> None:
    path = tmp_path / "fail.db"
    open_database(path, [V1], what="notes", error=SyncError).close()
    broken = Migration(2, "break", statements("CREATE TABLE half (x)", "CREATE TABLE notes (x)"))  # 2nd: exists
    with pytest.raises(SyncError, match="fail.db: not a usable notes .*already exists"):
        open_database(path, [V1, broken], what="notes", error=SyncError)
    with sqlite3.connect(path) as conn:
        assert user_version(conn) == 1 and "half" not in names(conn)


def test_a_deferrable_step_that_cannot_be_written_is_retried_at_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "full.db"
    open_database(path, [V1], what="notes", error=SyncError).close()
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO notes (text) VALUES (?)", [(f"note {i} " * 40,) for i in range(200)])
    sqlite3.connect(path, isolation_level=None).execute("VACUUM").connection.close()
    full = sqlite3.connect(path)
    full.execute(f"PRAGMA max_page_count = {full.execute('PRAGMA page_count').fetchone()[0]}")  # a full disk
    deferrable = Migration(2, V2.summary, V2.apply, deferrable="notes work without it")
    with caplog.at_level("WARNING"):
        assert open_database(full, [V1, deferrable, V3], what="notes", error=SyncError) is full
    assert user_version(full) == 1 and "tags" not in names(full)  # later steps wait for it
    assert "cannot add a notes index of schema version 2" in caplog.text and "notes work without it" in caplog.text
    full.execute("SELECT 1")  # a borrowed connection stays open
    full.close()
    conn = open_database(path, [V1, deferrable, V3], what="notes", error=SyncError)
    assert user_version(conn) == 3
    conn.close()


def test_paths_that_cannot_be_a_database(tmp_path: Path) -> None:
    with pytest.raises(SyncError, match="missing.db: no such notes"):
        open_database(tmp_path / "missing.db", [V1], what="notes", error=SyncError, create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(SyncError, match="folder .*nowhere does not exist"):
        open_database(tmp_path / "nowhere" / "x.db", [V1], what="notes", error=SyncError)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SyncError, match="garbage.db: not a usable notes"):
        open_database(garbage, [V1], what="notes", error=SyncError)


def test_a_borrowed_connection_keeps_its_journal_mode_and_autocommit_opens_none(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "borrowed.db")
    assert open_database(conn, [V1], what="notes", error=SyncError) is conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    auto = open_database(tmp_path / "auto.db", [V1], what="notes", error=SyncError, autocommit=True)
    auto.execute("INSERT INTO notes (text) VALUES ('x')")
    assert not auto.in_transaction
    auto.close()


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(ValueError, match=r"numbered 1, 2, ... in order, got \[1, 3\]"):
        migrate(conn, [V1, V3], name="x", what="notes", error=SyncError)
    conn.close()
