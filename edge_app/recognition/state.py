"""What the recognition worker last concluded: the one item the kiosk's result slot holds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shelfsight.edge_app.recognition import (
    Announcement,
    Recognition,
)

if TYPE_CHECKING:
    pass
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KioskState:
    announcement: Announcement
    frame: Recognition | None  # the latest single-frame result
    frame_index: int
    updated: float  # time.monotonic()
