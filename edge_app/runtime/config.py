"""The `[model]` section: which embedder the kiosk opens."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shelfsight.edge_app.core.config import StrictModel


class ModelConfig(StrictModel):
    path: Path | None = Field(None, description="A .tflite embedder with its .json sidecar; None: the bundled default")
    threads: int = Field(
        2, ge=1, le=16, description="Interpreter threads (a Pi 4 has 4 cores; leave one to the camera)"
    )
