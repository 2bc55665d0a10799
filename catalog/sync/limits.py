"""Message size limits, in one place: the broker, every client's receive limit and every sender's check.

MQTT 5 lets a client announce the largest packet it accepts (CONNECT Maximum Packet Size), and a
broker must then drop, not send, anything larger. Mosquitto 2.0 drops such a QoS 1 message without
freeing the in-flight slot it took, so after `max_inflight_messages` drops the client receives
nothing more (tests/sync/test_limits.py shows it on the example broker settings). The only safe
arrangement is that the broker accepts no packet that a client would refuse: the broker's
`max_packet_size` (deploy/mosquitto/mosquitto.conf) equals `MAX_PACKET_BYTES`, which is also every
client's default receive limit (`BrokerConfig.max_packet_bytes`), and every payload a sender
builds (chunks, envelopes, enrollments, status) fits in it with `PACKET_OVERHEAD` to spare.
A test parses the example config and checks that it agrees with these constants.
"""

from __future__ import annotations

from shelfsight.edge_app.core.errors import ConfigError, SyncError

# The broker's max_packet_size and every client's receive limit (deploy/mosquitto/mosquitto.conf says the same).
MAX_PACKET_BYTES = 1024 * 1024
# Topic name + MQTT fixed/variable header + properties, rounded up generously.
PACKET_OVERHEAD = 512
# Largest signed envelope (manifest, delta) a kiosk accepts by default and HQ publishes.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024


def largest_payload(receive_limit: int) -> int:
    """The largest payload that arrives in one packet under `receive_limit`."""
    return receive_limit - PACKET_OVERHEAD


def check_payload_limit(payload_bytes: int, receive_limit: int, what: str) -> None:
    """ConfigError if `payload_bytes` of `what` plus packet overhead would not fit a `receive_limit` packet."""
    if payload_bytes + PACKET_OVERHEAD > receive_limit:
        raise ConfigError(
            f"{what} of {payload_bytes} bytes does not fit the {receive_limit}-byte packet limit "
            f"(at most {largest_payload(receive_limit)} bytes)"
        )


def broker_limit_problem(broker_limit: int | None, receive_limit: int) -> str | None:
    """Why a broker that accepts `broker_limit`-byte packets would stall a client receiving `receive_limit`.

    None when the broker refuses, at publish time, everything the client could not receive.
    """
    if broker_limit is None:
        return (
            f"the broker announces no maximum packet size; set its max_packet_size to {receive_limit} "
            "or less, or an oversized message stalls this client"
        )
    if broker_limit > receive_limit:
        return (
            f"the broker accepts packets up to {broker_limit} bytes but this client receives at most "
            f"{receive_limit}; set the broker's max_packet_size to {receive_limit} or less"
        )
    return None


def check_broker_limit(broker_limit: int | None, receive_limit: int, where: str) -> None:
    problem = broker_limit_problem(broker_limit, receive_limit)
    if problem is not None:
        raise SyncError(f"{where}: {problem}")
