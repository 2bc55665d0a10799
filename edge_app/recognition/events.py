"""Announcement events: one per change of what the kiosk announces, for the event stream and MQTT.

The recognition worker produces a state per frame (10-30 a second); integrators want
to hear when the answer changes ("now showing product X", "nothing there"), not every
frame. `AnnouncementFeed` watches the states and hands each change, as one JSON-ready
dict, to its subscribers: the page's Server-Sent Events and, with sync configured, the
kiosk's `events/<id>` MQTT topic, so both carry the same payload.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any, Callable
from urllib.parse import quote

from shelfsight.edge_app.recognition.state import KioskState

log = logging.getLogger(__name__)

CARD_FIELDS = ("product_id", "name", "price", "description", "category")
Event = dict[str, Any]


def product_card(info: dict[str, Any]) -> dict[str, Any]:
    """A product as clients see it: its catalog fields and where its picture is (no internal fields)."""
    card = {key: info.get(key) for key in CARD_FIELDS}
    card["thumbnail_url"] = "/api/thumbnail/" + quote(str(info["product_id"]), safe="")
    return card


class AnnouncementFeed:
    """Calls every subscriber with an event dict whenever the announced decision or product changes."""

    def __init__(
        self,
        product_info: Callable[[str], dict[str, Any]],
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    ) -> None:
        self._product_info = product_info
        self._clock = clock
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self._last: tuple[str, str | None] = ("starting", None)
        self._seq = 0
        self.latest: Event | None = None

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]:
        """Add a subscriber (called on the recognition thread: it must not block); returns its unsubscribe."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def observe(self, state: KioskState) -> Event | None:
        """Feed one state; returns (and sends) the event if the announcement changed."""
        ann = state.announcement
        key = (ann.decision, ann.product_id)
        if key == self._last:
            return None
        self._last = key
        self._seq += 1
        rec = ann.recognition
        product = None
        if ann.decision == "product" and ann.product_id is not None:
            try:
                product = product_card(self._product_info(ann.product_id))
            except Exception:  # the product went away between the frame and now: announce without its card
                log.warning("no catalog data for announced product %s", ann.product_id)
                product = {"product_id": ann.product_id}
        event: Event = {
            "type": "announcement",
            "seq": self._seq,
            "time": self._clock().isoformat(timespec="milliseconds"),
            "decision": ann.decision,
            "product": product,
            "confidence": round(rec.confidence, 4)
            if rec is not None and ann.decision in ("product", "unknown")
            else 0.0,
        }
        self.latest = event
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed")
        return event
