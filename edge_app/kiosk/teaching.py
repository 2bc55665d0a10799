"""What teaching a product at the kiosk produces, what undoing it needs, and how its frames are encoded."""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from shelfsight.catalog.store import PreparedReference
    from shelfsight.catalog.sync.messages import Enrollment
    from shelfsight.edge_app.recognition import Recognition
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taught:
    """What `Kiosk.teach` stored: the product (new or existing) and the references made from the frames."""

    product_id: str
    name: str
    category: str
    new_product: bool
    references: tuple["PreparedReference", ...]
    skipped: tuple[str, ...]  # why unusable frames were left out
    sent_to_hq: bool = False
    # What the clerk typed with a new product; None for views added to an existing one (its row is not changed).
    price: float | None = None
    description: str | None = None
    reference_ids: tuple[str, ...] = ()  # the stored references this teach added (a view already stored adds none)
    # The queued enrollment's `created` stamp (set with sent_to_hq): what names it to HQ if the teach is undone.
    enrollment_created: float | None = None

    def enrollment(self, kiosk_id: str) -> "Enrollment":
        """The message HQ's inbox stores and `hq approve` folds into the master catalog, stamped now."""
        import base64

        from shelfsight.catalog.sync.messages import (
            MAX_ENROLL_FRAMES,
            EnrolledFrame,
            Enrollment,
        )

        frames = [
            EnrolledFrame(
                embedding=[float(x) for x in r.embedding],
                fingerprint=r.fingerprint,
                phash=r.phash,
                image_jpeg=base64.b64encode(r.image_jpeg).decode("ascii"),
            )
            for r in self.references[:MAX_ENROLL_FRAMES]
        ]
        return Enrollment(
            kiosk_id=kiosk_id,
            product_id=self.product_id,
            name=self.name,
            category=self.category,
            price=self.price,
            description=self.description or None,
            frames=frames,
            created=time.time(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "new_product": self.new_product,  # a new product is a local one until HQ approves it
            "references": len(self.references),
            "skipped_frames": list(self.skipped),
            "sent_to_hq": self.sent_to_hq,
        }


UNDO_PRODUCTS = 100  # products whose teaches a kiosk process remembers for undo
UNDO_DEPTH = 10  # teaches of one product that can be undone in turn (each keeps its reference ids)


@dataclass
class TeachRecord:
    """What one teach changed, kept in memory so `Kiosk.undo_teach` takes back exactly that.

    `version` and `references` are the product's row version and reference ids right after the
    teach: if they differ at undo time, someone else changed the product since (HQ synced it,
    the CLI removed a view) and undoing would throw away their change.
    """

    product_id: str
    new_product: bool
    added: tuple[str, ...]  # reference ids this teach stored
    version: int
    references: frozenset[str]
    # The `created` stamp of the enrollment queued for HQ (after the catalog write); None: none was.
    enrollment_created: float | None = None

    @property
    def sent_to_hq(self) -> bool:
        return self.enrollment_created is not None

    @property
    def leaves(self) -> tuple[int, frozenset[str]]:
        """The product as this teach left it: (row version, reference ids)."""
        return self.version, self.references

    def changed(self, current: dict[str, Any] | None) -> str | None:
        """Why the product (`Catalog.product`, None: gone) is no longer as this teach left it; None if it is."""
        if current is None:
            return "it is no longer in the catalog"
        if int(current["version"]) != self.version:
            if self.new_product and not current["local"]:
                return "HQ's catalog holds it now"
            return "its catalog entry changed"
        if frozenset(current["references"]) != self.references:
            return "its views changed"
        return None


class UndoLog:
    """The teaches this kiosk process made, newest last per product; the least recently taught products go first.

    Not locked: the kiosk uses it under its pipeline lock, with the catalog writes it records.
    """

    def __init__(self, limit: int = UNDO_PRODUCTS) -> None:
        self.limit = limit
        self._stacks: OrderedDict[str, list[TeachRecord]] = OrderedDict()

    def push(self, record: TeachRecord, before: tuple[int, frozenset[str]] | None) -> None:
        """Remember `record`; `before`: the product as the teach found it (None: new).

        Earlier teaches of the product are dropped when it was changed elsewhere between them:
        undoing down to them would also take back that change.
        """
        stack = self._stacks.pop(record.product_id, [])
        if stack and stack[-1].leaves != before:
            stack = []
        stack.append(record)
        del stack[:-UNDO_DEPTH]  # the oldest teaches of a product taught over and over
        self._stacks[record.product_id] = stack
        while len(self._stacks) > self.limit:
            self._stacks.popitem(last=False)

    def latest(self, product_id: str) -> TeachRecord | None:
        stack = self._stacks.get(product_id)
        return stack[-1] if stack else None

    def pop(self, product_id: str) -> None:
        """The latest teach of `product_id` was undone."""
        stack = self._stacks.get(product_id)
        if stack:
            stack.pop()
        if not stack:
            self._stacks.pop(product_id, None)

    def forget(self, product_id: str) -> None:
        """Nothing of `product_id` can be undone any more (changed elsewhere)."""
        self._stacks.pop(product_id, None)


@dataclass(frozen=True)
class Lookalike:
    """The known product most of the views to teach are recognised as."""

    product_id: str
    name: str
    confidence: float  # mean recognition confidence over the frames that named it, in [0, 1]
    frames: int  # how many of the usable frames named it


def lookalike(recognitions: Sequence["Recognition"], product_id: str) -> Lookalike | None:
    """The other product that more than half of `recognitions` announce, if any.

    A strict majority, not any single frame: one frame can match another product on a shared
    logo or a blurred glimpse, and the kiosk's temporal vote would not announce it either; a
    product most frames name is what a shopper would be told, so it is the clerk's to confirm.
    Frames recognised as `product_id` itself (views added to the same product) never count.
    """
    named = [r for r in recognitions if r.decision == "product" and r.product_id not in (None, product_id)]
    if not named:
        return None
    best, count = Counter(r.product_id for r in named).most_common(1)[0]
    if 2 * count <= len(recognitions):
        return None
    mine = [r for r in named if r.product_id == best]
    confidence = min(1.0, max(0.0, sum(r.confidence for r in mine) / len(mine)))
    product = mine[-1].product or {}
    return Lookalike(str(best), str(product.get("name") or best), confidence, count)


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()
