"""The `sync:` section of a kiosk's config, and the broker settings HQ shares.

Secrets are never written into the config itself: the password comes from an
environment variable or a file, named here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from catalog.sync.topics import Topics, check_name
from edge_app.errors import ConfigError

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024


class BrokerConfig(BaseModel):
    """How to reach the MQTT broker (paho adapter in `catalog/sync/mqtt.py`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "localhost"
    port: int = Field(default=8883, ge=1, le=65535)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # The broker keeps a disconnected kiosk's subscriptions and queued messages this long.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    # Largest packet we accept from the broker; the broker drops bigger ones instead of sending them.
    max_packet_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES + 4096, ge=1024)

    def password(self) -> str | None:
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"sync: environment variable {self.password_env} (broker password) is not set")
            return value
        if self.password_file:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{self.password_file}: cannot read broker password ({exc.strerror})") from exc
        return None


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
