"""The `[model]` section: which embedder the kiosk opens."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from shelfsight.edge_app.core.config import StrictModel

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    pass


class ModelConfig(StrictModel):
    path: Path | None = Field(None, description="A .tflite embedder with its .json sidecar; None: the bundled default")
    threads: int = Field(2, ge=1, le=16)
