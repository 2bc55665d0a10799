"""Opens the configured `MessageBus` adapter (kept apart from the interface, as Frigate keeps its detector factory)."""

from __future__ import annotations

from shelfsight.catalog.sync.transport.base import (
    ConnectHandler,
    MessageBus,
    MessageHandler,
    Will,
)
from shelfsight.catalog.sync.transport.config import BrokerConfig


def open_bus(
    config: BrokerConfig,
    *,
    client_id: str,
    on_message: MessageHandler,
    on_connect: ConnectHandler | None = None,
    will: Will | None = None,
    persistent: bool = True,
) -> MessageBus:
    """The bus for `config`. `persistent` keeps the session (subscriptions, queued messages) across disconnects."""
    from shelfsight.catalog.sync.transport.paho import PahoBus

    return PahoBus(
        config, client_id=client_id, on_message=on_message, on_connect=on_connect, will=will, persistent=persistent
    )
