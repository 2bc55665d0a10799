"""Server-Sent Events: announcement events pushed to browsers and integrators (GET /api/events).

waitress runs each request on one of its worker threads, and a stream holds its thread
for as long as the client listens, so streams are counted: past `limit` a new one is
refused (503) and the page's polls and searches keep their threads. Each stream has a
small queue; a client that does not read falls behind and loses the oldest events
(the `seq` numbers show the gap), it never slows the recognition thread.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Iterator

from shelfsight.edge_app.recognition.events import AnnouncementFeed, Event

KEEPALIVE_S = 10.0  # below waitress's idle-connection timeout (15 s default), so an idle stream stays open
_QUEUE = 64
_WAKE_S = 0.5  # how often a waiting stream checks whether the server is stopping


def sse(event: Event) -> str:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


class EventStreams:
    def __init__(self, feed: AnnouncementFeed, limit: int, keepalive_s: float = KEEPALIVE_S) -> None:
        self._feed, self.limit, self.keepalive_s = feed, limit, keepalive_s
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None
        self._closed = threading.Event()

    def open(self) -> Iterator[str] | None:
        """A stream starting with the current announcement; None when `limit` streams are already open."""
        if self._slots is None or not self._slots.acquire(blocking=False):
            return None
        inbox: queue.Queue[Event] = queue.Queue(_QUEUE)

        def deliver(event: Event) -> None:
            try:
                inbox.put_nowait(event)
            except queue.Full:  # a client not reading: drop its oldest, keep the newest
                try:
                    inbox.get_nowait()
                    inbox.put_nowait(event)
                except (queue.Empty, queue.Full):
                    pass

        unsubscribe = self._feed.subscribe(deliver)
        return self._stream(inbox, unsubscribe)

    def _stream(self, inbox: "queue.Queue[Event]", unsubscribe: object) -> Iterator[str]:
        assert self._slots is not None and callable(unsubscribe)
        try:
            yield "retry: 2000\n\n"  # a client reconnects 2 s after the kiosk restarts
            if self._feed.latest is not None:
                yield sse(self._feed.latest)
            quiet = 0.0
            while not self._closed.is_set():
                try:
                    event = inbox.get(timeout=_WAKE_S)
                except queue.Empty:
                    quiet += _WAKE_S
                    if quiet >= self.keepalive_s:
                        quiet = 0.0
                        yield ": keepalive\n\n"
                    continue
                quiet = 0.0
                yield sse(event)
        finally:  # the client went away (write failed) or the server stops
            unsubscribe()
            self._slots.release()

    def close(self) -> None:
        """End every open stream within half a second (server shutdown)."""
        self._closed.set()
