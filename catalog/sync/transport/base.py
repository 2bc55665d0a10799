"""The message-bus seam: what sync needs from a broker, nothing more.

`open_bus` (factory.py) returns the paho/MQTT adapter (paho.py, the only
module that imports paho); memory.py is an in-process broker for fast tests
of the sync rules. Messages are acknowledged explicitly with `ack`, after the
work they carry is durable.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    mid: int


MessageHandler = Callable[[Message], None]
# Called after every successful (re)connect with the broker's "session present" flag.
ConnectHandler = Callable[[bool], None]


@dataclass(frozen=True)
class Will:
    """Published by the broker for us if we vanish without disconnecting."""

    topic: str
    payload: bytes
    retain: bool = True


class MessageBus(abc.ABC):
    """A connection to a publish/subscribe broker. Thread-safe; handlers run on the bus's thread."""

    @abc.abstractmethod
    def connect(self, timeout: float | None = 10.0) -> None:
        """Start connecting. With a timeout, wait for the broker's answer and raise SyncError if refused."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    @abc.abstractmethod
    def max_packet_bytes(self) -> int | None:
        """The broker's maximum packet size, if it announced one."""

    @property
    @abc.abstractmethod
    def receive_limit(self) -> int | None:
        """The largest packet this client accepts (announced to the broker at connect), if any."""

    @abc.abstractmethod
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float | None = 10.0
    ) -> None:
        """Publish; with a timeout, wait for the broker's acknowledgement and raise SyncError if it refused."""

    @abc.abstractmethod
    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now and again after every reconnect."""

    @abc.abstractmethod
    def unsubscribe(self, topic_filter: str) -> None: ...

    @abc.abstractmethod
    def ack(self, message: Message) -> None:
        """Acknowledge a received message; until then the broker redelivers it after a reconnect."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect cleanly (no last will). Idempotent."""

    def __enter__(self) -> "MessageBus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
