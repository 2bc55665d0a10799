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
        self.feed, self.limit, self.keepalive_s = feed, limit, keepalive_s
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None
        self.stopping = threading.Event()

    def open(self) -> "Stream | None":
        """A stream starting with the current announcement; None when `limit` streams are already open.

        The caller must see `Stream.close` called however the response ends (Flask's `call_on_close`):
        a HEAD request or a client gone before the first chunk never runs the body's `finally`.
        """
        if self._slots is None or not self._slots.acquire(blocking=False):
            return None
        return Stream(self, self._slots)

    def close(self) -> None:
        """End every open stream within half a second (server shutdown)."""
        self.stopping.set()


class Stream:
    """One client's stream: a bounded inbox fed by the feed, its body, and an idempotent close."""

    def __init__(self, streams: EventStreams, slots: threading.BoundedSemaphore) -> None:
        self._streams, self._slots = streams, slots
        self._inbox: queue.Queue[Event] = queue.Queue(_QUEUE)
        self._closed = False
        self._lock = threading.Lock()
        self._unsubscribe = streams.feed.subscribe(self._deliver)

    def _deliver(self, event: Event) -> None:
        try:
            self._inbox.put_nowait(event)
        except queue.Full:  # a client not reading: drop its oldest, keep the newest
            try:
                self._inbox.get_nowait()
                self._inbox.put_nowait(event)
            except (queue.Empty, queue.Full):
                pass

    def body(self) -> Iterator[str]:
        try:
            yield "retry: 2000\n\n"  # a client reconnects 2 s after the kiosk restarts
            latest = self._streams.feed.latest
            if latest is not None:
                yield sse(latest)
            quiet = 0.0
            while not self._streams.stopping.is_set() and not self._closed:
                try:
                    event = self._inbox.get(timeout=_WAKE_S)
                except queue.Empty:
                    quiet += _WAKE_S
                    if quiet >= self._streams.keepalive_s:
                        quiet = 0.0
                        yield ": keepalive\n\n"
                    continue
                quiet = 0.0
                yield sse(event)
        finally:  # the client went away (write failed) or the server stops
            self.close()

    def close(self) -> None:
        """Unsubscribe and free the slot, once, whoever calls first (the body's end or the response's close)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unsubscribe()
        self._slots.release()
