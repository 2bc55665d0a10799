"""HQ's inbox of products taught at stores, waiting for a person to approve them into the master.

The file is versioned like the catalog (`edge_app.core.sqlite`): releases before
versioning left it at version 0 with the table of version 1, which only creates
what is missing, so those files are adopted in place; a file from a newer
release is an InputError rather than being misread.
"""

from __future__ import annotations

import base64
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
from shelfsight.catalog.sync.messages import Enrollment, TypedFields
from shelfsight.edge_app.core.errors import CatalogError, InputError
from shelfsight.edge_app.core.images import decode_rgb
from shelfsight.edge_app.core.sqlite import Migration, open_database, statements

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
)


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
        with self._lock, closing(self._db.cursor()) as cursor:
            cursor.execute(
                "INSERT INTO enrollments (kiosk_id, product_id, name, frames, payload, received) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    enrollment.kiosk_id,
                    enrollment.product_id,
                    enrollment.name,
                    len(enrollment.frames),
                    enrollment.model_dump_json(),
                    time.time(),
                ),
            )
            return int(cursor.lastrowid or 0)

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
        if status != "pending":
            raise InputError(f"enrollment #{entry_id} is already {status}")
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
            self._mark(entry_id, "pending", f"approve failed: {exc}")
            raise
        self._mark(entry_id, "approved", f"master v{master.version}")
        return master.version

    def reject(self, entry_id: int, note: str = "") -> None:
        _, status = self._load(entry_id)
        if status != "pending":
            raise InputError(f"enrollment #{entry_id} is already {status}")
        self._mark(entry_id, "rejected", note)


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
