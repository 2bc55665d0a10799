"""Message size limits agree everywhere (one source: catalog/sync/limits.py), and no oversized message stalls HQ.

Against a real Mosquitto with the example config's limits (deploy/mosquitto/mosquitto.conf): Mosquitto
2.0 drops a QoS 1 message that is over a client's Maximum Packet Size and never frees its in-flight
slot, so a client whose receive limit is below the broker's stops receiving after
`max_inflight_messages` such drops. With the limits agreeing, the broker refuses an oversized message
from its sender instead, and HQ keeps receiving.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from shelfsight.catalog.hq.cli import hq_group
from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.hq.publisher import DEFAULT_CHUNK_BYTES, HqPublisher
from shelfsight.catalog.sync.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_PACKET_BYTES, PACKET_OVERHEAD
from shelfsight.catalog.sync.messages import MAX_ENROLL_BYTES, MAX_STATUS_BYTES, EnrolledFrame, Enrollment
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.edge_app.core.errors import ConfigError, SyncError
from shelfsight.edge_app.kiosk.updates.config import SyncConfig
from tests.support.broker import Broker, example_limits, example_settings
from tests.support.sync import DIM, WAIT, Hq, RunningServer, Tap


def test_the_example_broker_config_agrees_with_every_clients_limits() -> None:
    settings = example_settings()
    broker_limit = int(settings["max_packet_size"])
    assert broker_limit == MAX_PACKET_BYTES == BrokerConfig().max_packet_bytes
    assert SyncConfig().max_packet_bytes == broker_limit  # a kiosk's default receive limit
    # message_size_limit (payload only) must not let through what max_packet_size would not.
    assert int(settings.get("message_size_limit", 0)) <= broker_limit - PACKET_OVERHEAD
    for payload in (DEFAULT_CHUNK_BYTES, DEFAULT_MAX_MESSAGE_BYTES, MAX_ENROLL_BYTES, MAX_STATUS_BYTES):
        assert payload + PACKET_OVERHEAD <= broker_limit
    with pytest.raises(ValueError, match="does not fit"):
        SyncConfig(max_packet_bytes=64 * 1024)  # a message limit of 256 KiB cannot arrive in 64 KiB packets


def _enrollment(kiosk_id: str, fingerprint: str) -> bytes:
    frame = EnrolledFrame(embedding=[0.5] * DIM, fingerprint=fingerprint)
    return Enrollment(kiosk_id=kiosk_id, product_id="taught", name="Taught", frames=[frame]).model_dump_json().encode()


def test_hq_keeps_receiving_through_oversized_messages_on_the_example_broker(
    broker_factory, tmp_path: Path, hq_keys
) -> None:
    broker: Broker = broker_factory(extra=example_limits())
    inflight = int(example_settings()["max_inflight_messages"])
    hq = Hq(tmp_path / "hq", broker, hq_keys[0])
    hq.add(range(3))
    inbox = EnrollmentInbox(tmp_path / "inbox.db")
    server = RunningServer(hq, hq_keys[0], inbox)
    attacker = Tap(broker, client_id="k1")
    try:
        # Under the broker's limit: they reach HQ, which refuses them after its size check and acknowledges them.
        for _ in range(inflight + 5):
            attacker.inject(hq.topics.enroll("k1"), b"x" * (MAX_PACKET_BYTES - 1024))
        # Over it: the broker refuses them from their sender; HQ never sees them.
        with pytest.raises(SyncError, match="maximum packet size"):
            attacker.inject(hq.topics.enroll("k1"), b"x" * MAX_PACKET_BYTES)
        honest = Tap(broker, client_id="k2")
        honest.inject(hq.topics.enroll("k2"), _enrollment("k2", hq.fingerprint))
        assert _wait_for(lambda: [e.kiosk_id for e in inbox.entries()] == ["k2"]), inbox.entries()
        honest.close()
    finally:
        attacker.close()
        server.stop()
        inbox.close()
        hq.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll `predicate` (a SQLite file has no change notification) until it holds or `timeout` passes."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        pause.wait(0.05)
    return predicate()


def test_hq_refuses_a_broker_that_accepts_more_than_hq_receives(broker_factory) -> None:
    broker: Broker = broker_factory(max_packet_size=2 * MAX_PACKET_BYTES)
    bus = open_bus(BrokerConfig(host="127.0.0.1", port=broker.port), client_id="hq", on_message=lambda m: None)
    try:
        with pytest.raises(SyncError, match="accepts packets up to"):
            bus.connect(timeout=10)
    finally:
        bus.close()


def test_hq_refuses_chunk_sizes_its_kiosks_cannot_receive(tmp_path: Path, hq_keys) -> None:
    master = tmp_path / "master.db"
    master.write_bytes(b"")
    with pytest.raises(ConfigError, match="chunk size of 1048576 bytes does not fit"):
        HqPublisher(master, hq_keys[0], None, None, chunk_bytes=MAX_PACKET_BYTES)  # type: ignore[arg-type]
    key = tmp_path / "hq.key"
    key.write_text("not read: the option is refused first")
    args = ["serve", "--db", str(master), "--key", str(key), "--chunk-kb", "300000"]
    result = CliRunner().invoke(hq_group, args)
    assert result.exit_code == 2 and "--chunk-kb" in result.output
