"""The `sync:` section of a kiosk's config, and the broker settings HQ shares.

Secrets are never written into the config itself: the password comes from an
environment variable or a file, named here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from shelfsight.catalog.sync.topics import Topics, check_name
from shelfsight.catalog.sync.transport.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    BrokerConfig,
)
from shelfsight.edge_app.core.errors import ConfigError


class SyncConfig(BrokerConfig):
    """Kiosk side: broker settings plus who we are and whom we trust."""

    enabled: bool = True
    prefix: str = "shelfsight"
    fleet: str = "default"
    kiosk_id: str = "kiosk"
    public_key: Path = Path("hq_signing.pub")
    # Out-of-order deltas wait this long for the missing one before we fetch a snapshot.
    hold_s: float = Field(default=5.0, ge=0.0, le=3600.0)
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    # A snapshot or release larger than this is refused before any chunk is stored.
    max_blob_bytes: int = Field(default=1 << 30, ge=1024)

    @field_validator("prefix", "fleet", "kiosk_id")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_name(value, "name")
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix, self.fleet)
