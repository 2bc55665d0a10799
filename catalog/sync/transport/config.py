"""How a client reaches the MQTT broker: shared by HQ and the kiosks."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from shelfsight.catalog.sync.limits import MAX_PACKET_BYTES
from shelfsight.edge_app.core.config import StrictModel
from shelfsight.edge_app.core.errors import ConfigError


class BrokerConfig(StrictModel):
    """How to reach the MQTT broker (paho adapter in `catalog/sync/transport/paho.py`)."""

    # Descriptions are also the help of `shelfsight hq ...`'s options (catalog/hq/cli.py builds them from here).
    host: str = Field(default="localhost", description="Broker host.")
    port: int = Field(default=8883, ge=1, le=65535, description="Broker port.")
    tls_ca: Path | None = Field(default=None, description="CA certificate (enables TLS).")
    tls_cert: Path | None = Field(default=None, description="Client certificate.")
    tls_key: Path | None = Field(default=None, description="Client certificate key.")
    username: str | None = Field(default=None, description="Broker username.")
    password_env: str | None = Field(default=None, description="Environment variable holding the broker password.")
    password_file: Path | None = Field(default=None, description="File holding the password.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="Seconds between keepalive pings.")
    # The broker keeps a disconnected kiosk's subscriptions and queued messages this long.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0, description="Seconds the broker keeps our session.")
    # Largest packet we accept from the broker. It must not be below the broker's max_packet_size: the broker
    # would drop bigger ones and Mosquitto never frees their in-flight slots (catalog/sync/limits.py).
    max_packet_bytes: int = Field(
        default=MAX_PACKET_BYTES,
        ge=1024,
        description="Largest packet we accept from the broker; at least the broker's max_packet_size.",
    )

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
