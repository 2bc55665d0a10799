"""The fleet as the console shows it: every kiosk's retained status, kept current by one subscription."""

from __future__ import annotations

import logging
import threading
import uuid
from abc import ABC, abstractmethod

from shelfsight.catalog.sync.messages import MAX_STATUS_BYTES, KioskStatus, parse_upstream
from shelfsight.catalog.sync.topics import Topics
from shelfsight.catalog.sync.transport.base import Message
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.edge_app.core.errors import SyncError

log = logging.getLogger(__name__)

MAX_PROBLEMS = 20  # the latest unreadable statuses shown; a flooding kiosk cannot grow this


class FleetView(ABC):
    """What the console asks of the fleet."""

    @abstractmethod
    def statuses(self) -> tuple[list[KioskStatus], list[str]]:
        """(the latest status of each kiosk by id, the latest problems with unreadable ones)."""


class NoFleet(FleetView):
    """No broker configured: the console shows enrollments and products only."""

    def statuses(self) -> tuple[list[KioskStatus], list[str]]:
        return [], []


class StatusBoard(FleetView):
    """Subscribed to `status/+` while open; the broker hands over the retained statuses, then every change."""

    def __init__(self, config: BrokerConfig, topics: Topics) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, KioskStatus] = {}
        self._problems: list[str] = []
        self._bus = open_bus(
            config, client_id=f"hq-console-{uuid.uuid4().hex[:8]}", on_message=self._record, persistent=False
        )
        self._bus.subscribe(topics.all_of("status"))

    def open(self) -> "StatusBoard":
        self._bus.connect()
        return self

    def close(self) -> None:
        self._bus.close()

    def __enter__(self) -> "StatusBoard":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, message: Message) -> None:
        self._bus.ack(message)  # a status is only shown, never acted on: nothing to redeliver
        if not message.payload:
            return
        try:
            status = parse_upstream(KioskStatus, message.payload, topic=message.topic, max_bytes=MAX_STATUS_BYTES)
        except SyncError as exc:
            log.warning("unreadable kiosk status: %s", exc)
            with self._lock:
                self._problems = [*self._problems, str(exc)][-MAX_PROBLEMS:]
            return
        assert isinstance(status, KioskStatus)
        with self._lock:
            self._found[status.kiosk_id] = status

    def statuses(self) -> tuple[list[KioskStatus], list[str]]:
        with self._lock:
            return [self._found[k] for k in sorted(self._found)], list(self._problems)
