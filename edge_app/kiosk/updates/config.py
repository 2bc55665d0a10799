"""The `sync:` section of a kiosk's config, and the broker settings HQ shares.

Secrets are never written into the config itself: the password comes from an
environment variable or a file, named here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from shelfsight.catalog.sync.limits import DEFAULT_MAX_MESSAGE_BYTES, check_payload_limit
from shelfsight.catalog.sync.topics import DEFAULT_FLEET, DEFAULT_PREFIX, Topics, check_name
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.edge_app.core.errors import ConfigError


class SyncConfig(BrokerConfig):
    """Kiosk side: broker settings plus who we are and whom we trust."""

    enabled: bool = Field(True, description="Follow HQ's updates; false keeps the section but stays offline")
    prefix: str = Field(DEFAULT_PREFIX, description="First level of every topic (the same at HQ)")
    fleet: str = Field(DEFAULT_FLEET, description="The store group this kiosk belongs to (second topic level)")
    kiosk_id: str = Field("kiosk", description="This kiosk's name in status and enrollment topics; unique per fleet")
    public_key: Path = Field(
        Path("hq_signing.pub"), description="HQ's Ed25519 public key; messages it did not sign are refused"
    )
    hold_s: float = Field(
        default=5.0, ge=0.0, le=3600.0,
        description="How long an out-of-order delta waits for the missing one before a snapshot is fetched",
    )  # fmt: skip
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        description="Largest MQTT message accepted (checked before decoding)",
    )
    max_blob_bytes: int = Field(
        default=1 << 30, ge=1024, description="Largest snapshot or release accepted, refused before any chunk is stored"
    )

    @field_validator("prefix", "fleet", "kiosk_id")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_name(value, "name")
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _fits_packets(self) -> "SyncConfig":
        # A message limit above what one packet carries would accept what can never arrive.
        try:
            check_payload_limit(self.max_message_bytes, self.max_packet_bytes, "sync.max_message_bytes")
        except ConfigError as exc:
            raise ValueError(f"{exc}; raise max_packet_bytes (and the broker's max_packet_size) with it") from exc
        return self

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix, self.fleet)
