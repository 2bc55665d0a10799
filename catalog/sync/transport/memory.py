"""An in-process broker and `MessageBus` for fast tests of the sync rules; not for production.

The sync rules lean on a handful of broker behaviours. This module models
exactly those, so a test can run HQ and several kiosks in one process, in
milliseconds, without Mosquitto (the real-broker tests in tests/sync stay the
proof that paho and Mosquitto behave the same way):

- topic filters with `+` and `#` (wildcards at the first level skip `$` topics)
  and shared subscriptions `$share/<group>/<filter>` (one member per message);
- retained messages, sent on every subscribe (so also on each reconnect, as
  the paho adapter renews its subscriptions); an empty retained payload clears
  the topic;
- QoS 1 with explicit `ack`: a message stays in the client's session until it
  is acknowledged, and a persistent session gets its unacknowledged and queued
  messages again on reconnect. That is why sync acknowledges after its commit:
  a kiosk that loses its connection between receiving and committing sees the
  message again;
- the broker's maximum packet size (publishing more raises `SyncError`, as the
  paho adapter does with the size announced in CONNACK) and the client's own
  (the broker drops what the client would refuse, silently, as MQTT 5 says);
- a bound on each session's unacknowledged and queued messages (brokers drop
  the rest silently: sync must converge from the retained manifest anyway);
- the last will, published when a connection is lost (`drop`), not on `close`.

Delivery happens on one thread per broker, in publish order, so handlers run on
"the bus's thread" as with paho and never inside the publisher's call.
`MemoryBroker.drain()` waits until every queued message has been handed over,
so tests observe delivery without sleeping.

Not modelled: authentication and ACLs, session expiry, keepalive, TLS, QoS 2,
message expiry, a broker restart.

Use: `broker = MemoryBroker()`; `broker.open_bus` has the signature of
`transport.factory.open_bus` (pass it as `KioskSync(bus_factory=...)`), or
construct `InMemoryBus(broker, client_id=..., on_message=...)` directly.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from shelfsight.catalog.sync.limits import MAX_PACKET_BYTES
from shelfsight.catalog.sync.transport.base import (
    ConnectHandler,
    Message,
    MessageBus,
    MessageHandler,
    Will,
)
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.edge_app.core.errors import SyncError

log = logging.getLogger(__name__)

_SHARE = "$share/"
# Mosquitto's default `max_queued_messages`; tests/support/broker.py starts its broker with the same.
DEFAULT_MAX_QUEUED = 1000


def check_filter(topic_filter: str) -> None:
    """Raise SyncError unless `topic_filter` is a valid MQTT filter (`#` last and alone, `+` alone in a level)."""
    levels = _share_parts(topic_filter)[1].split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise SyncError(f"{topic_filter!r}: not a valid topic filter")


def check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise SyncError(f"{topic!r}: not a valid topic to publish on")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: `+` is one level, `#` the rest (including the parent level itself)."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and wanted[0] in ("+", "#"):
        return False  # $SYS-style topics are never matched by a leading wildcard
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(wanted) == len(levels)


def packet_bytes(topic: str, payload: bytes, qos: int) -> int:
    """Size of the PUBLISH packet carrying this message (no properties), as a maximum packet size counts it."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + len(payload)
    length_bytes = 1
    while body >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + body


def _share_parts(topic_filter: str) -> tuple[str | None, str]:
    """`$share/<group>/<filter>` -> (group, filter); a plain filter -> (None, filter)."""
    if not topic_filter.startswith(_SHARE):
        return None, topic_filter
    group, _, rest = topic_filter[len(_SHARE) :].partition("/")
    if not group or not rest:
        raise SyncError(f"{topic_filter!r}: a shared subscription is $share/<group>/<filter>")
    return group, rest


@dataclass
class _Session:
    """What the broker keeps for one client id, connected or not."""

    client_id: str
    persistent: bool
    max_packet_bytes: int | None
    subscriptions: dict[str, int] = field(default_factory=dict)
    # Sent or queued QoS 1 messages not yet acknowledged, by packet id, oldest first.
    unacked: dict[int, Message] = field(default_factory=dict)
    next_mid: int = 1
    connection: InMemoryBus | None = None
    # Bumped on every connect: a delivery queued for an earlier connection is not handed to the new one
    # (the message stays unacknowledged and is sent again, as a broker resends on reconnect).
    epoch: int = 0

    def take_mid(self) -> int:
        mid = self.next_mid
        self.next_mid = mid % 65535 + 1
        return mid


@dataclass
class _Delivery:
    bus: InMemoryBus
    epoch: int
    run: Callable[[], None]


class MemoryBroker:
    """The shared "broker": every `InMemoryBus` made on it talks to every other. Thread-safe."""

    def __init__(
        self, *, max_packet_bytes: int | None = MAX_PACKET_BYTES, max_queued_messages: int = DEFAULT_MAX_QUEUED
    ) -> None:
        self.max_packet_bytes = max_packet_bytes
        self.max_queued_messages = max_queued_messages
        self.dropped = 0  # messages dropped at a session's queue bound or a client's packet limit
        self._cond = threading.Condition(threading.RLock())
        self._retained: dict[str, Message] = {}
        self._sessions: dict[str, _Session] = {}
        self._share_turn: dict[tuple[str, str], int] = {}
        self._queue: deque[_Delivery] = deque()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def open_bus(
        self,
        config: BrokerConfig,
        *,
        client_id: str,
        on_message: MessageHandler,
        on_connect: ConnectHandler | None = None,
        will: Will | None = None,
        persistent: bool = True,
    ) -> InMemoryBus:
        """Same signature as `transport.factory.open_bus`; of `config`, only `max_packet_bytes` applies."""
        return InMemoryBus(
            self,
            client_id=client_id,
            on_message=on_message,
            on_connect=on_connect,
            will=will,
            persistent=persistent,
            max_packet_bytes=config.max_packet_bytes,
        )

    def retained(self, topic: str) -> bytes | None:
        with self._cond:
            message = self._retained.get(topic)
        return None if message is None else message.payload

    def unacked(self, client_id: str) -> int:
        """How many QoS 1 messages `client_id`'s session holds that it has not acknowledged."""
        with self._cond:
            session = self._sessions.get(client_id)
            return 0 if session is None else len(session.unacked)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery has been handed to its handler. False on timeout."""
        if threading.current_thread() is self._thread:
            raise SyncError("drain() called from a message handler would wait for itself")
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        """Stop the delivery thread (queued deliveries are handed over first). Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    def __enter__(self) -> MemoryBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by InMemoryBus (any thread) -----------------------------------------
    def _connect(self, bus: InMemoryBus) -> None:
        with self._cond:
            if self._closed:
                raise SyncError("in-memory broker is closed")
            session = self._sessions.get(bus.client_id)
            present = session is not None and bus.persistent and session.persistent
            if session is not None and session.connection is not None and session.connection is not bus:
                session.connection._connected = False  # same client id: the newer connection takes over
            if not present:
                session = _Session(bus.client_id, bus.persistent, bus.max_packet_limit)
                self._sessions[bus.client_id] = session
            assert session is not None
            session.connection = bus
            session.persistent = bus.persistent
            session.max_packet_bytes = bus.max_packet_limit
            session.epoch += 1
            bus._connected = bus._ever_connected = True
            self._enqueue(session, lambda: bus._connected_callback(present))
            for message in session.unacked.values():  # oldest first, same packet ids
                self._enqueue(session, _handing(bus, message))

    def _disconnect(self, bus: InMemoryBus, will: Will | None) -> None:
        with self._cond:
            session = self._sessions.get(bus.client_id)
            if session is not None and session.connection is bus:
                session.connection = None
                if not session.persistent:
                    del self._sessions[bus.client_id]
        if will is not None:
            self._route(will.topic, will.payload, qos=1, retain=will.retain)

    def _subscribe(self, bus: InMemoryBus, topic_filter: str, qos: int) -> None:
        group, plain = _share_parts(topic_filter)
        with self._cond:
            session = self._live_session(bus)
            if session is None:
                return
            session.subscriptions[topic_filter] = qos
            if group is not None:
                return  # MQTT 5: retained messages are not sent to shared subscriptions
            for topic, message in self._retained.items():
                if topic_matches(plain, topic):
                    self._offer(session, message, min(qos, message.qos), retain=True)

    def _unsubscribe(self, bus: InMemoryBus, topic_filter: str) -> None:
        with self._cond:
            session = self._live_session(bus)
            if session is not None:
                session.subscriptions.pop(topic_filter, None)

    def _ack(self, bus: InMemoryBus, mid: int) -> None:
        with self._cond:
            session = self._sessions.get(bus.client_id)
            if session is not None:
                session.unacked.pop(mid, None)

    def _route(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        check_topic(topic)
        if self.max_packet_bytes is not None and packet_bytes(topic, payload, qos) > self.max_packet_bytes:
            raise SyncError(
                f"{topic}: {len(payload)}-byte message is over the broker's maximum packet size "
                f"({self.max_packet_bytes})"
            )
        with self._cond:
            if retain:
                if payload:
                    self._retained[topic] = Message(topic=topic, payload=payload, retain=True, qos=qos, mid=0)
                else:
                    self._retained.pop(topic, None)
            shared: dict[tuple[str, str], list[tuple[_Session, int]]] = {}
            for session in list(self._sessions.values()):
                best: int | None = None
                for topic_filter, sub_qos in session.subscriptions.items():
                    group, plain = _share_parts(topic_filter)
                    if not topic_matches(plain, topic):
                        continue
                    if group is None:
                        best = max(best if best is not None else 0, sub_qos)
                    else:
                        shared.setdefault((group, plain), []).append((session, sub_qos))
                if best is not None:
                    self._offer(session, Message(topic, payload, False, qos, 0), min(qos, best), retain=False)
            for key, members in shared.items():
                online = [m for m in members if m[0].connection is not None] or members
                turn = self._share_turn.get(key, 0)
                self._share_turn[key] = turn + 1
                session, sub_qos = online[turn % len(online)]
                self._offer(session, Message(topic, payload, False, qos, 0), min(qos, sub_qos), retain=False)

    # -- internals (lock held) ---------------------------------------------------
    def _live_session(self, bus: InMemoryBus) -> _Session | None:
        session = self._sessions.get(bus.client_id)
        return session if session is not None and session.connection is bus else None

    def _offer(self, session: _Session, message: Message, qos: int, *, retain: bool) -> None:
        """Send `message` to one session now, or keep it for its reconnect (QoS 1), within the limits."""
        if session.max_packet_bytes is not None and packet_bytes(message.topic, message.payload, qos) > (
            session.max_packet_bytes
        ):
            self.dropped += 1
            log.info(
                "%s: message on %s is over the client's maximum packet size; dropped", session.client_id, message.topic
            )
            return
        if qos == 0:
            if session.connection is not None:
                sent = Message(message.topic, message.payload, retain, 0, 0)
                self._enqueue(session, _handing(session.connection, sent))
            return
        if len(session.unacked) >= self.max_queued_messages:
            self.dropped += 1
            log.info(
                "%s: %d messages unacknowledged; dropped one on %s",
                session.client_id,
                len(session.unacked),
                message.topic,
            )
            return
        sent = Message(message.topic, message.payload, retain, 1, session.take_mid())
        session.unacked[sent.mid] = sent
        if session.connection is not None:
            self._enqueue(session, _handing(session.connection, sent))

    def _enqueue(self, session: _Session, run: Callable[[], None]) -> None:
        assert session.connection is not None
        self._queue.append(_Delivery(session.connection, session.epoch, run))
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver_forever, name="memory-broker", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _deliver_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue:
                    return
                delivery = self._queue.popleft()
                session = self._sessions.get(delivery.bus.client_id)
                live = session is not None and session.connection is delivery.bus and session.epoch == delivery.epoch
                self._busy = live
            try:
                if live:
                    delivery.run()
            except Exception:  # as the paho adapter: a handler bug must not stop delivery; the message stays unacked
                log.exception("in-memory bus handler failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _handing(bus: InMemoryBus, message: Message) -> Callable[[], None]:
    return lambda: bus._on_message(message)


class InMemoryBus(MessageBus):
    """A client of a `MemoryBroker`, with the `MessageBus` behaviour of the paho adapter."""

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        client_id: str,
        on_message: MessageHandler,
        on_connect: ConnectHandler | None = None,
        will: Will | None = None,
        persistent: bool = True,
        max_packet_bytes: int | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.persistent = persistent
        self.max_packet_limit = max_packet_bytes
        self._on_message = on_message
        self._on_connect = on_connect
        self._will = will
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}
        self._connected = False
        self._ever_connected = False
        # Published with timeout=None while disconnected: sent after the next connect, as paho queues them.
        self._outbox: list[tuple[str, bytes, int, bool]] = []

    # -- connection -------------------------------------------------------
    def connect(self, timeout: float | None = 10.0) -> None:
        """Connect at once (the broker is always there); renews every subscription, as the paho adapter does."""
        with self._lock:
            if self._connected:
                return
            subscriptions = list(self._subscriptions.items())
            outbox, self._outbox = self._outbox, []
        self.broker._connect(self)
        for topic_filter, qos in subscriptions:
            self.broker._subscribe(self, topic_filter, qos)
        for topic, payload, qos, retain in outbox:
            self.broker._route(topic, payload, qos=qos, retain=retain)

    def drop(self) -> None:
        """Lose the connection without a goodbye (a network failure): the broker publishes the will."""
        self._lost(publish_will=True)

    def _lost(self, *, publish_will: bool) -> None:
        with self._lock:
            if not self._connected:
                return
            self._connected = False
        self.broker._disconnect(self, self._will if publish_will else None)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def max_packet_bytes(self) -> int | None:
        # Like CONNACK's Maximum Packet Size: known only once connected.
        return self.broker.max_packet_bytes if self._ever_connected else None

    @property
    def receive_limit(self) -> int | None:
        return self.max_packet_limit

    def close(self) -> None:
        self._lost(publish_will=False)
        with self._lock:
            self._outbox.clear()

    # -- messages ---------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float | None = 10.0
    ) -> None:
        qos = min(max(qos, 0), 1)  # QoS 2 is not modelled; sync uses 1
        if not self._connected:
            if timeout is None:
                with self._lock:
                    self._outbox.append((topic, bytes(payload), qos, retain))
                return
            raise SyncError(f"{topic}: publish failed (not connected)")
        self.broker._route(topic, bytes(payload), qos=qos, retain=retain)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        check_filter(topic_filter)
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self._connected:
            self.broker._subscribe(self, topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            known = self._subscriptions.pop(topic_filter, None)
        if known is not None and self._connected:
            self.broker._unsubscribe(self, topic_filter)

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self.broker._ack(self, message.mid)

    # -- called on the broker's delivery thread ------------------------------------
    def _connected_callback(self, session_present: bool) -> None:
        if self._on_connect is not None:
            self._on_connect(session_present)
