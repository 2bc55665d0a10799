"""The `[web]` section: where the kiosk page and HTTP API listen, and how prices look."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shelfsight.edge_app.core.access import is_loopback
from shelfsight.edge_app.core.config import StrictModel


class WebConfig(StrictModel):
    enabled: bool = Field(True, description="Serve the kiosk page and the HTTP API")
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on; 127.0.0.1 serves only this machine's screen. Any other address "
        "needs staff_credential",
    )
    staff_credential: Path | None = Field(
        None,
        description="File with the staff PIN's scrypt hash, written by `shelfsight kiosk set-staff-pin`; "
        "staff log in with the PIN to teach and to watch the camera from another device. Absent: nobody can teach",
    )
    staff_session_idle_s: float = Field(
        900.0, gt=0, le=86_400, description="A staff session ends after this many seconds without a request"
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest image accepted by POST /search")
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="Largest upload by its header's width x height; refused before decoding"
    )
    decode_slots: int = Field(2, ge=1, le=16, description="Uploads decoded at the same time (each holds its pixels)")
    search_slots: int = Field(
        4, ge=1, le=64, description="POST /search requests admitted at once (running or queued); more get 429"
    )
    threads: int = Field(
        8,
        ge=1,
        le=64,
        description="Worker threads running requests; above search_slots, so that a full search queue answers 429 "
        "while the page's polls and /health are still served",
    )
    connection_timeout_s: float = Field(
        15.0, gt=0, le=600, description="An idle or unfinished connection is closed after this many seconds"
    )
    connection_limit: int = Field(
        100, ge=1, le=10_000, description="Open connections at most; more wait in the backlog"
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of the live frame the page shows")
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

    language: Literal["en", "sv"] = Field(
        "en", description="Language of the shopper's screen: a message catalog in edge_app/web/static/i18n/"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Web origins (scheme://host[:port]) whose pages may call the read-only API (POST /search, "
        "GET /api/products, /api/events) from a browser, e.g. a POS screen; empty: same origin only",
    )
    event_streams: int = Field(
        2,
        ge=0,
        le=16,
        description="Clients that may hold GET /api/events (Server-Sent Events) open at once; each holds one of "
        "the server's threads, so keep it well below threads",
    )

    @field_validator("cors_origins")
    @classmethod
    def origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin) or origin.endswith("/"):
                raise ValueError(f"{origin!r} is not an origin like https://pos.example:8443 (no path, no slash)")
        return origins

    @model_validator(mode="after")
    def network_needs_a_credential(self) -> "WebConfig":
        if self.enabled and not is_loopback(self.host) and self.staff_credential is None:
            raise ValueError(
                f"host {self.host!r} is reachable from the network, so web.staff_credential must be set "
                '(create it with `shelfsight kiosk set-staff-pin`), or use host = "127.0.0.1"'
            )
        if self.event_streams >= self.threads:
            raise ValueError(f"event_streams ({self.event_streams}) must be below threads ({self.threads})")
        return self
