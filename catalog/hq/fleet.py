"""HQ's view of the fleet: the kiosks' retained status messages, as rows for `shelfsight hq status`."""

from __future__ import annotations

import logging
import threading
import time
import uuid

from shelfsight.catalog.sync.messages import (
    MAX_STATUS_BYTES,
    KioskStatus,
    parse_upstream,
)
from shelfsight.catalog.sync.topics import Topics
from shelfsight.catalog.sync.transport.base import Message
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.edge_app.core.errors import SyncError

log = logging.getLogger(__name__)


def collect_status(config: BrokerConfig, topics: Topics, *, wait_s: float = 2.0) -> tuple[list[KioskStatus], list[str]]:
    """Read every kiosk's retained status. Returns (statuses by kiosk id, problems with unreadable ones)."""
    found: dict[str, KioskStatus] = {}
    problems: list[str] = []
    lock = threading.Lock()

    def record(message: Message) -> None:
        if not message.payload:
            return
        try:
            status = parse_upstream(KioskStatus, message.payload, topic=message.topic, max_bytes=MAX_STATUS_BYTES)
        except SyncError as exc:
            with lock:
                problems.append(str(exc))
            return
        assert isinstance(status, KioskStatus)
        with lock:
            found[status.kiosk_id] = status

    bus = open_bus(config, client_id=f"hq-status-{uuid.uuid4().hex[:8]}", on_message=record, persistent=False)
    bus.subscribe(topics.all_of("status"))
    try:
        bus.connect()
        time.sleep(wait_s)  # retained messages arrive right after subscribing; there is no "end" marker
    finally:
        bus.close()
    return [found[k] for k in sorted(found)], problems


def status_rows(statuses: list[KioskStatus], target_version: int | None, now: float | None = None) -> list[list[str]]:
    """Table rows: kiosk, state, version, behind, model, fps, uptime, age, last error."""
    now = time.time() if now is None else now
    rows = []
    for s in statuses:
        behind = (
            ""
            if target_version is None or s.catalog_version is None
            else str(max(0, target_version - s.catalog_version))
        )
        rows.append(
            [
                s.kiosk_id,
                s.state,
                "" if s.catalog_version is None else str(s.catalog_version),
                behind,
                (s.model_fingerprint or "")[:12],
                "" if s.fps is None else f"{s.fps:.1f}",
                "" if s.uptime_s is None else f"{s.uptime_s / 3600:.1f}h",
                f"{max(0.0, now - s.updated):.0f}s" if s.updated else "",
                s.last_error or "",
            ]
        )
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)
