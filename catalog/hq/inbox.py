"""HQ's inbox of products taught at stores, waiting for a person to approve them into the master.

The file is versioned like the catalog (`edge_app.core.sqlite`): releases before
versioning left it at version 0 with the table of version 1, which only creates
what is missing, so those files are adopted in place; a file from a newer
release is an InputError rather than being misread.

An entry is pending until a person approves or rejects it, or until its kiosk withdraws it
(the clerk undid the teach: `withdraw`). A withdrawn entry keeps its photos, for the record,
and can no longer be approved. Every withdrawal is recorded in its own table with what came
of it, and one that arrives before its enrollment (several `hq serve` workers share the
topics, so the two can be handled out of order) makes that enrollment arrive withdrawn.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from shelfsight.catalog.quality import reference_keypoints
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.codec import validation_problems
from shelfsight.catalog.sync.messages import Enrollment, TypedFields, Withdrawal, enrollment_created
from shelfsight.edge_app.core.errors import CatalogError, InputError
from shelfsight.edge_app.core.images import decode_rgb
from shelfsight.edge_app.core.sqlite import Migration, open_database, statements

log = logging.getLogger(__name__)

# Append only.
MIGRATIONS = (
    Migration(
        1,
        "create the table",
        statements(
            "CREATE TABLE IF NOT EXISTS enrollments ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, kiosk_id TEXT NOT NULL, product_id TEXT NOT NULL, "
            "name TEXT NOT NULL, frames INTEGER NOT NULL, payload TEXT NOT NULL, received REAL NOT NULL, "
            "status TEXT NOT NULL DEFAULT 'pending', note TEXT NOT NULL DEFAULT '')"
        ),
    ),
    Migration(
        2,
        "record withdrawals of enrollments",
        statements(
            # `enrollment_created` is the withdrawn enrollment's `created` stamp: bound as a float on both
            # sides (never parsed by SQLite), so equality is exact.
            "CREATE TABLE withdrawals (id INTEGER PRIMARY KEY AUTOINCREMENT, kiosk_id TEXT NOT NULL, "
            "product_id TEXT NOT NULL, enrollment_created REAL NOT NULL, received REAL NOT NULL, "
            "outcome TEXT NOT NULL)",
            "CREATE INDEX withdrawals_by_product ON withdrawals (kiosk_id, product_id)",
            "CREATE INDEX enrollments_by_product ON enrollments (kiosk_id, product_id)",
        ),
    ),
)

PENDING, APPROVED, REJECTED, WITHDRAWN = "pending", "approved", "rejected", "withdrawn"
STATUSES = (PENDING, APPROVED, REJECTED, WITHDRAWN)


@dataclass(frozen=True)
class InboxEntry:
    id: int
    kiosk_id: str
    product_id: str
    name: str
    frames: int
    received: float
    status: str
    note: str
    # What the clerk typed with the product (read from the stored payload; None/"" when not sent).
    category: str = ""
    price: float | None = None
    description: str = ""


@dataclass(frozen=True)
class WithdrawalRecord:
    """A withdrawal HQ received, and what came of it (`outcome`, for people)."""

    id: int
    kiosk_id: str
    product_id: str
    enrollment_created: float
    received: float
    outcome: str


class EnrollmentInbox:
    """A small SQLite file. `hq serve` adds to it; `hq enrollments` / `hq approve` read it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_database(
            self.path, MIGRATIONS, what="enrollment inbox", error=InputError, adopt_unversioned=True, autocommit=True
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "EnrollmentInbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, enrollment: Enrollment) -> int:
        """Store an enrollment; it arrives withdrawn if its kiosk already withdrew it (see the module doc)."""
        key = (enrollment.kiosk_id, enrollment.product_id, enrollment.created)
        with self._lock, closing(self._db.cursor()) as cursor:
            cursor.execute("BEGIN IMMEDIATE")  # the look and the write in one transaction
            try:
                earlier = cursor.execute(
                    "SELECT id FROM withdrawals WHERE kiosk_id = ? AND product_id = ? AND enrollment_created = ? "
                    "ORDER BY id LIMIT 1",
                    key,
                ).fetchone()
                status, note = (WITHDRAWN, _WITHDRAWN_NOTE.format(kiosk=key[0])) if earlier else (PENDING, "")
                cursor.execute(
                    "INSERT INTO enrollments (kiosk_id, product_id, name, frames, payload, received, status, note) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        enrollment.kiosk_id,
                        enrollment.product_id,
                        enrollment.name,
                        len(enrollment.frames),
                        enrollment.model_dump_json(),
                        time.time(),
                        status,
                        note,
                    ),
                )
                entry_id = int(cursor.lastrowid or 0)
                if earlier:
                    cursor.execute(
                        "UPDATE withdrawals SET outcome = ? WHERE id = ?",
                        (f"withdrew #{entry_id}, which arrived after it", earlier[0]),
                    )
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        if earlier:
            log.info(
                "enrollment #%d of %s from %s arrived after its withdrawal: stored as withdrawn",
                entry_id,
                enrollment.product_id,
                enrollment.kiosk_id,
            )
        return entry_id

    def withdraw(self, withdrawal: Withdrawal) -> list[int]:
        """The kiosk took an enrollment back (its teach was undone): mark it withdrawn if it is pending.

        Returns the entries withdrawn (more than one when the broker delivered the enrollment twice).
        Only that kiosk's entries of that product with that `created` stamp are candidates. One
        already approved stays approved: HQ's catalog is HQ's, and removing the product there is a
        decision for HQ (logged). The withdrawal is recorded in every case; when no entry matches,
        the enrollment may still be on its way, and it is stored withdrawn when it comes.
        """
        kiosk_id, product_id = withdrawal.kiosk_id, withdrawal.product_id
        with self._lock, closing(self._db.cursor()) as cursor:
            cursor.execute("BEGIN IMMEDIATE")  # the look and the write in one transaction
            try:
                rows = cursor.execute(
                    "SELECT id, status, payload FROM enrollments WHERE kiosk_id = ? AND product_id = ? ORDER BY id",
                    (kiosk_id, product_id),
                ).fetchall()
                matched = [
                    (int(i), str(status))
                    for i, status, payload in rows
                    if enrollment_created(payload) == withdrawal.enrollment_created
                ]
                withdrawn = [i for i, status in matched if status == PENDING]
                decided = [(i, status) for i, status in matched if status != PENDING]
                for entry_id in withdrawn:
                    cursor.execute(
                        "UPDATE enrollments SET status = ?, note = ? WHERE id = ? AND status = ?",
                        (WITHDRAWN, _WITHDRAWN_NOTE.format(kiosk=kiosk_id), entry_id, PENDING),
                    )
                outcome = _outcome(withdrawn, decided)
                cursor.execute(
                    "INSERT INTO withdrawals (kiosk_id, product_id, enrollment_created, received, outcome) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (kiosk_id, product_id, withdrawal.enrollment_created, time.time(), outcome),
                )
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        approved = [i for i, status in decided if status == APPROVED]
        if approved:
            log.warning(
                "%s withdrew its enrollment of %s, already approved as #%s: ignored, the master catalog keeps it "
                "(remove the product there if it should go)",
                kiosk_id,
                product_id,
                ", #".join(map(str, approved)),
            )
        else:
            log.info("withdrawal of %s from %s: %s", product_id, kiosk_id, outcome)
        return withdrawn

    def withdrawals(self) -> list[WithdrawalRecord]:
        """Every withdrawal received, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kiosk_id, product_id, enrollment_created, received, outcome FROM withdrawals ORDER BY id"
            ).fetchall()
        return [WithdrawalRecord(*row) for row in rows]

    def entries(self, status: str | None = None) -> list[InboxEntry]:
        # json_extract reads three fields of the payload (validated when it was added) without parsing its frames.
        sql = (
            "SELECT id, kiosk_id, product_id, name, frames, received, status, note, "
            "coalesce(json_extract(payload, '$.category'), ''), json_extract(payload, '$.price'), "
            "coalesce(json_extract(payload, '$.description'), '') FROM enrollments"
        )
        params: tuple[str, ...] = ()
        if status is not None:
            sql, params = sql + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [InboxEntry(*row) for row in rows]

    def _load(self, entry_id: int) -> tuple[Enrollment, str]:
        with self._lock:
            row = self._db.execute("SELECT payload, status FROM enrollments WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise InputError(f"{self.path}: no enrollment #{entry_id}")
        return Enrollment.model_validate_json(row[0]), str(row[1])

    def _status(self, entry_id: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM enrollments WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else str(row[0])

    def enrollment(self, entry_id: int) -> Enrollment:
        """The enrollment as the kiosk sent it (frames and photos included); InputError if there is none."""
        return self._load(entry_id)[0]

    def _mark(self, entry_id: int, status: str, note: str = "") -> None:
        with self._lock:
            self._db.execute("UPDATE enrollments SET status = ?, note = ? WHERE id = ?", (status, note, entry_id))

    def approve(
        self, entry_id: int, master: Catalog, *, price: float | None = None, description: str | None = None
    ) -> int:
        """Fold an enrollment into the master catalog (one transaction); returns the new master version.

        A product new to the master gets the price and description the clerk typed, unless `price` /
        `description` (typed by the person approving) replace them; for a product the master already
        has, only those given here change it (the master's own values win over a store's). The product
        gets a thumbnail from its sharpest enrolled photo.
        """
        try:  # the approver's values get the bounds the kiosk's have, before anything is written
            TypedFields(price=price, description=description)
        except ValidationError as exc:
            raise InputError(f"enrollment #{entry_id}: {validation_problems(exc)}") from exc
        enrollment, status = self._load(entry_id)
        _check_pending(entry_id, status)
        master.check_model(enrollment.frames[0].fingerprint)
        given: dict[str, Any] = {k: v for k, v in (("price", price), ("description", description)) if v is not None}
        try:
            with master.batch():
                try:
                    master.product(enrollment.product_id)
                except (CatalogError, InputError):
                    typed: dict[str, Any] = {"price": enrollment.price, "description": enrollment.description}
                    fields = {k: v for k, v in typed.items() if v is not None} | given
                    master.add_product(enrollment.product_id, enrollment.name, category=enrollment.category, **fields)
                    given = {}
                for frame in enrollment.frames:
                    image_jpeg = base64.b64decode(frame.image_jpeg) if frame.image_jpeg else None
                    master.add_reference_vector(
                        enrollment.product_id,
                        np.asarray(frame.embedding, dtype=np.float32),
                        fingerprint=frame.fingerprint,
                        phash=frame.phash,
                        source=f"enrolled at {enrollment.kiosk_id}",
                        image_jpeg=image_jpeg,
                        keypoints=_keypoints(image_jpeg, entry_id),
                    )
                if given:
                    master.update_product(enrollment.product_id, **given)
                master.fill_thumbnails([enrollment.product_id])
        except (CatalogError, InputError) as exc:
            with self._lock:  # only the note: a withdrawal that came meanwhile stays
                self._db.execute(
                    "UPDATE enrollments SET note = ? WHERE id = ? AND status = ?",
                    (f"approve failed: {exc}", entry_id, PENDING),
                )
            raise
        # The master has it now, so the entry says approved even if its kiosk withdrew it meanwhile.
        if self._status(entry_id) == WITHDRAWN:
            log.warning("enrollment #%d was withdrawn by its kiosk while it was being approved; approved", entry_id)
        self._mark(entry_id, APPROVED, f"master v{master.version}")
        return master.version

    def reject(self, entry_id: int, note: str = "") -> None:
        _, status = self._load(entry_id)
        _check_pending(entry_id, status)
        self._mark(entry_id, REJECTED, note)


_WITHDRAWN_NOTE = "withdrawn by {kiosk}: the teach was undone at the kiosk"


def _check_pending(entry_id: int, status: str) -> None:
    if status == WITHDRAWN:
        raise InputError(
            f"enrollment #{entry_id} was withdrawn by its kiosk (the clerk undid the teach); it cannot be approved "
            "or rejected"
        )
    if status != PENDING:
        raise InputError(f"enrollment #{entry_id} is already {status}")


def _outcome(withdrawn: list[int], decided: list[tuple[int, str]]) -> str:
    parts = [f"withdrew #{i}" for i in withdrawn] + [
        f"#{i} already {status}" + (": the master keeps it" if status == APPROVED else "") for i, status in decided
    ]
    return "; ".join(parts) or "no such enrollment yet: it is stored withdrawn if it arrives"


def _keypoints(image_jpeg: bytes | None, entry_id: int) -> bytes | None:
    """Local features of an enrolled frame, so stores can verify the product geometrically.

    The frame arrives as the enrollment's 256 px square, so these are computed from less than a
    catalog photo offers; they still verify the view the clerk showed.
    """
    if image_jpeg is None:
        return None
    try:
        rgb = decode_rgb(image_jpeg, name=f"enrollment #{entry_id}")
    except InputError as exc:
        raise InputError(f"enrollment #{entry_id} carries an unreadable frame ({exc})") from exc
    return reference_keypoints(rgb)
