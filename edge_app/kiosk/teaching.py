"""What teaching a product at the kiosk produces, and how its frames are encoded."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from shelfsight.catalog.store import PreparedReference
    from shelfsight.catalog.sync.messages import Enrollment
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

    def enrollment(self, kiosk_id: str) -> "Enrollment":
        """The message HQ's inbox stores and `hq approve` folds into the master catalog."""
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
            "local": self.new_product,
            "new_product": self.new_product,
            "references": len(self.references),
            "skipped_frames": list(self.skipped),
            "sent_to_hq": self.sent_to_hq,
        }


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()
