"""The `[web]` section: where the kiosk page and HTTP API listen, and how prices look."""

from __future__ import annotations

import sys

from pydantic import Field

from shelfsight.edge_app.core.config import StrictModel

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    pass


class WebConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    jpeg_quality: int = Field(80, ge=10, le=100)
    currency: str | None = Field(
        None,
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code the page shows prices in, e.g. SEK; absent: a bare number",
    )
    locale: str | None = Field(
        None,
        pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="BCP 47 locale for prices on the page, e.g. sv-SE; absent: the browser's",
    )
