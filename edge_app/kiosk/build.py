"""Construction: a `Kiosk` from its validated configuration."""

from __future__ import annotations

import logging

from shelfsight.edge_app.camera import (
    open_source,
)
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.kiosk.config import KioskConfig
from shelfsight.edge_app.kiosk.sources import current_sources, open_recognizer

log = logging.getLogger(__name__)


def build_kiosk(config: KioskConfig, *, with_camera: bool = True) -> Kiosk:
    """Open the model, the catalog and the camera described by a validated config."""
    recognizer = open_recognizer(*current_sources(config), config, serve_at_once=True)
    source = open_source(config.camera) if with_camera else None
    return Kiosk(recognizer, source, jpeg_quality=config.web.jpeg_quality)
