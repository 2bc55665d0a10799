"""paho-mqtt 2.x adapter (VERSION2 callbacks, MQTT 5): the only module that imports paho.

Sessions are persistent (`clean_start=False` + session expiry) and every
subscription is renewed on reconnect anyway, because a broker may have
expired or lost the session. Acknowledgements are manual.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shelfsight.catalog.sync.limits import check_broker_limit
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

_MAX_REMEMBERED_ACKS = 4096


class PahoBus(MessageBus):
    def __init__(
        self,
        config: BrokerConfig,
        *,
        client_id: str,
        on_message: MessageHandler,
        on_connect: ConnectHandler | None = None,
        will: Will | None = None,
        persistent: bool = True,
    ) -> None:
        self._config = config
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._persistent = persistent
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}
        self._connected = threading.Event()
        self._answered = threading.Event()
        self._refusal: str | None = None
        self._max_packet: int | None = None
        # PUBACK reason codes by message id; paho reports them only to on_publish.
        self._publish_reasons: OrderedDict[int, Any] = OrderedDict()
        self._started = False
        self._retry_refusals = False

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        username = config.username
        if username is not None:
            client.username_pw_set(username, config.password())
        if config.tls_ca is not None:
            client.tls_set(
                ca_certs=str(config.tls_ca),
                certfile=str(config.tls_cert) if config.tls_cert else None,
                keyfile=str(config.tls_key) if config.tls_key else None,
            )
        if will is not None:
            client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        # paho's own outgoing queue is unbounded by default; sync republishes from state instead.
        client.max_queued_messages_set(10_000)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        self._client = client

    # -- connection -------------------------------------------------------
    def connect(self, timeout: float | None = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._config.session_expiry_s if self._persistent else 0
        props.MaximumPacketSize = self._config.max_packet_bytes
        self._answered.clear()
        self._refusal = None
        # A caller waiting for the answer gets the refusal; a background client (a kiosk) keeps retrying,
        # so fixing its credentials on the broker is enough.
        self._retry_refusals = timeout is None
        self._client.connect_async(
            self._config.host,
            self._config.port,
            keepalive=self._config.keepalive_s,
            clean_start=not self._persistent,
            properties=props,
        )
        if not self._started:
            self._client.loop_start()
            self._started = True
        if timeout is None:
            return
        if not self._answered.wait(timeout):
            raise SyncError(f"broker {self._config.host}:{self._config.port}: no answer within {timeout:.0f}s")
        if self._refusal is not None:
            raise SyncError(f"broker {self._config.host}:{self._config.port} refused the connection: {self._refusal}")
        # A caller that waits (HQ, the CLI) refuses to run on a broker that could stall it with oversized messages.
        check_broker_limit(self._max_packet, self._config.max_packet_bytes, f"broker {self._config.host}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def max_packet_bytes(self) -> int | None:
        return self._max_packet

    @property
    def receive_limit(self) -> int:
        return self._config.max_packet_bytes

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    # -- messages ---------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float | None = 10.0
    ) -> None:
        if self._max_packet is not None and len(payload) + len(topic) + 16 > self._max_packet:
            raise SyncError(
                f"{topic}: {len(payload)}-byte message is over the broker's maximum packet size ({self._max_packet})"
            )
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN and timeout is None:
            return  # paho queues it and sends it after the reconnect
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SyncError(f"{topic}: publish failed ({mqtt.error_string(info.rc)})")
        if timeout is None or qos == 0:
            return
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise SyncError(f"{topic}: the broker did not acknowledge the message within {timeout:.0f}s")
        with self._lock:
            reason = self._publish_reasons.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise SyncError(f"{topic}: the broker refused the message ({reason})")

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            known = self._subscriptions.pop(topic_filter, None)
        if known is not None and self._connected.is_set():
            self._client.unsubscribe(topic_filter)

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -- paho callbacks (network thread) ------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            log.warning("broker refused connection: %s", reason)
            self._answered.set()
            if not self._retry_refusals:
                client.disconnect()
            return
        self._max_packet = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        if subscriptions:
            client.subscribe([(topic, qos) for topic, qos in subscriptions])
        self._connected.set()
        self._answered.set()
        log.info("connected to broker (session present: %s)", flags.session_present)
        if self._on_connect_cb is not None:
            try:
                self._on_connect_cb(bool(flags.session_present))
            except Exception:  # a handler bug must not kill the network thread
                log.exception("connect handler failed")

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()
        log.info("disconnected from broker: %s", reason)

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(
            topic=msg.topic, payload=bytes(msg.payload), retain=bool(msg.retain), qos=msg.qos, mid=msg.mid
        )
        try:
            self._on_message(message)
        except Exception:  # never let one bad message stop delivery; it stays unacknowledged
            log.exception("message handler failed on %s", msg.topic)

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            self._publish_reasons[mid] = reason
            while len(self._publish_reasons) > _MAX_REMEMBERED_ACKS:
                self._publish_reasons.popitem(last=False)
