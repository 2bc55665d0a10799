"""Opening shelfsight's SQLite files and upgrading them in place, one way for all of them.

Three files outlive the release that wrote them: the catalog, a kiosk's sync
state and HQ's enrollment inbox. A kiosk or HQ that installs a newer release
must keep using them, so each opens through `open_database`, which sets the
pragmas the file needs and brings it to this release's layout with an ordered
list of numbered `Migration`s.

The layout version is `PRAGMA user_version`: it lives in the file header, costs
nothing to read, every SQLite tool shows it, and it is transactional, so each
step sets it in the same transaction as its changes and a step that fails
leaves neither half behind.

A file from before its kind was versioned reads as version 0 with tables in it
(the sync state and inbox of earlier releases). A caller whose first migration
only creates what is missing (`CREATE ... IF NOT EXISTS`) adopts such files
(`adopt_unversioned=True`); one whose files always carried a version (the
catalog) refuses them, since tables without a version there mean the path
names some other program's database.

A file from a newer release is refused with the caller's domain error, before
anything is written. This release cannot know what a later migration changed:
a column may mean something else, rows may have moved to another table. Reading
such a file would misread it, and writing to it (a kiosk rolled back to an older
release applying a delta) would leave rows the newer release then misreads. The
message says to upgrade shelfsight.

A step may be `deferrable`: one the file works without (the catalog's covering
indexes only make loading faster). When SQLite cannot apply it
(`OperationalError`: a full disk, a locked file), the file stays at the previous
version, opens, and the step is retried at the next open; a kiosk must keep
serving after an upgrade on a full disk.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from shelfsight.edge_app.core.errors import ShelfsightError

log = logging.getLogger(__name__)

_SAVEPOINT = "shelfsight_migration"


@dataclass(frozen=True)
class Migration:
    """Takes a file from `version - 1` to `version`, inside one transaction.

    `apply` must not commit (no `executescript`, which does; see `statements`).
    `summary` says what the step does, for the log ("add the indexes").
    `deferrable`, when set, says why the file works without this step; see the module docstring.
    """

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]
    deferrable: str = ""


def statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    """A migration step that runs SQL statements one by one, inside the step's transaction."""

    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


def user_version(conn: sqlite3.Connection) -> int:
    """The layout version a file carries (0 for a new file, or one from before versioning)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None


def _check_numbering(migrations: Sequence[Migration]) -> None:
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, ... in order, got {numbers}")


def _run_step(conn: sqlite3.Connection, migration: Migration) -> None:
    # A savepoint, not BEGIN: it nests inside a transaction the caller of a borrowed connection
    # has open, and behaves the same with and without Python's implicit transactions.
    conn.execute(f"SAVEPOINT {_SAVEPOINT}")
    try:
        migration.apply(conn)
        conn.execute(f"PRAGMA user_version = {int(migration.version)}")
    except BaseException:
        # Some errors (a full disk) can end the whole transaction, savepoint included.
        if conn.in_transaction:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")
        raise
    conn.execute(f"RELEASE {_SAVEPOINT}")


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration],
    *,
    name: str,
    what: str,
    error: type[ShelfsightError],
    adopt_unversioned: bool = False,
) -> int:
    """Bring the file on `conn` to the last migration's version; returns the version it had before.

    `error` (a domain error class) for a file from a newer release, or one with tables but no
    version unless `adopt_unversioned`. SQLite errors of a step that is not deferrable propagate.
    """
    _check_numbering(migrations)
    latest = len(migrations)
    current = user_version(conn)
    if current > latest:
        raise error(
            f"{name}: schema version {current} is newer than this shelfsight supports ({latest}); upgrade shelfsight"
        )
    existing = current > 0 or _has_tables(conn)
    if current == 0 and existing and not adopt_unversioned:
        raise error(f"{name}: not a shelfsight {what} (it has tables but no schema version)")
    for migration in migrations[current:]:
        if existing:
            log.info("%s: upgrading to schema version %d: %s", name, migration.version, migration.summary)
        try:
            _run_step(conn, migration)
        except sqlite3.OperationalError as exc:
            if not migration.deferrable:
                raise
            log.warning(
                "%s: cannot %s of schema version %d (%s); %s; retried at the next open",
                name,
                migration.summary,
                migration.version,
                exc,
                migration.deferrable,
            )
            break
        log.info("%s: %s schema now at version %d", name, what, migration.version)
    return current


def open_database(
    target: str | Path | sqlite3.Connection,
    migrations: Sequence[Migration],
    *,
    what: str,
    error: type[ShelfsightError],
    create: bool = True,
    adopt_unversioned: bool = False,
    journal_mode: str = "WAL",
    synchronous: str | None = None,
    busy_timeout_s: float = 30.0,
    foreign_keys: bool = False,
    autocommit: bool = False,
) -> sqlite3.Connection:
    """Open (or create) a shelfsight SQLite file at `target`, set its pragmas and migrate it.

    `what` names the kind of file in messages ("sync state"); every failure is an `error`.
    A path is opened for use from several threads (`check_same_thread=False`; callers lock),
    with `busy_timeout_s` to wait for another process's write and `journal_mode` (WAL:
    readers never block the writer). `autocommit`: every statement commits on its own
    (`isolation_level=None`); otherwise Python's implicit transactions (BEGIN DEFERRED, the
    default), which sqlite-utils requires. A connection passed in stays the caller's: its
    journal mode and timeout are left as they are and it is not closed on failure;
    `synchronous` and `foreign_keys` are set on it too, since they decide what the file's
    writes can rely on.
    """
    owned = not isinstance(target, sqlite3.Connection)
    if isinstance(target, sqlite3.Connection):
        conn, name = target, what
    else:
        path = Path(target)
        name = str(path)
        if not path.is_file():
            if not create:
                raise error(f"{path}: no such {what}")
            if not path.parent.is_dir():
                raise error(f"{path}: folder {path.parent} does not exist")
        try:
            conn = sqlite3.connect(
                str(path),
                timeout=busy_timeout_s,
                check_same_thread=False,
                isolation_level=None if autocommit else "DEFERRED",
            )
        except sqlite3.Error as exc:
            raise error(f"{path}: cannot open {what} ({exc})") from exc
    try:
        if owned:
            conn.execute(f"PRAGMA journal_mode={journal_mode}")
        if synchronous is not None:
            conn.execute(f"PRAGMA synchronous={synchronous}")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, migrations, name=name, what=what, error=error, adopt_unversioned=adopt_unversioned)
    except BaseException as exc:
        if owned:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise error(f"{name}: not a usable {what} ({exc})") from exc
        raise
    return conn
