"""The store topology: kiosks on a store broker bridged to HQ's broker (Mosquitto's own bridge, two processes).

The bridge lines are the example's (deploy/mosquitto/bridge-store.conf): catalog and reply topics in,
status, enrollments, their withdrawals and resync requests out, a clean session on every reconnect. The link between the
brokers runs through a relay that the test cuts, so only the bridge goes down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from shelfsight.catalog.sync.envelope import Signer, Verifier
from tests.support.broker import Broker, TcpRelay, bridge_lines
from tests.support.sync import WAIT, Hq, RunningServer, Searcher, Tap

FLEET = "north"  # the example bridge's fleet


@pytest.fixture
def hq_broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


@pytest.fixture
def relay(hq_broker: Broker) -> Iterator[TcpRelay]:
    link = TcpRelay(hq_broker.port)
    yield link
    link.close()


@pytest.fixture
def store(broker_factory: Callable[..., Broker], relay: TcpRelay) -> Broker:
    return broker_factory(extra=bridge_lines(relay.port))


def _bridged(store: Broker, hq: Hq) -> bool:
    """Wait until the retained manifest has come down the bridge."""
    tap = Tap(store, hq.topics.manifest, client_id="bridge-check")
    try:
        return tap.wait(lambda ms: bool(ms), WAIT)
    finally:
        tap.close()


def _goes_up(store: Broker, hq_broker: Broker, leaves: list[str]) -> bool:
    """Whether a kiosk's message on each of these upstream topics crosses the bridge to HQ's broker."""
    up = Tap(hq_broker, f"shelfsight/{FLEET}/+/k1", client_id="hq-upstream")
    kiosk = Tap(store, client_id="k1-upstream")
    wanted = {f"{leaf} marker".encode() for leaf in leaves}
    try:
        for _ in range(10):  # sent again until seen: HQ's tap may not be subscribed at the first one
            for leaf in leaves:
                kiosk.inject(f"shelfsight/{FLEET}/{leaf}/k1", f"{leaf} marker".encode())
            if up.wait(lambda ms: {m.payload for m in ms} >= wanted, WAIT / 10):
                return True
        return False
    finally:
        up.close()
        kiosk.close()


def test_kiosks_on_a_store_broker_serve_through_a_bridge_outage_and_converge_when_it_returns(
    hq_broker: Broker,
    store: Broker,
    relay: TcpRelay,
    tmp_path: Path,
    hq_keys: tuple[Signer, Verifier, Path],
    kiosk_factory,
) -> None:
    hq = Hq(tmp_path / "hq", hq_broker, hq_keys[0], fleet=FLEET)
    server = RunningServer(hq, hq_keys[0], poll_s=0.2)
    try:
        hq.add(range(3))
        assert _bridged(store, hq)
        # A long hold: converging without a snapshot means the resync answer came down the bridge.
        kiosk = kiosk_factory("k1", hq=hq, on=store, fleet=FLEET, hold_s=20.0)
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error
        searcher = Searcher(kiosk.data_dir)
        # The bridge goes down; the next connection is a new session (as after the session expired), so
        # nothing HQ publishes meanwhile is queued for the store.
        relay.down()
        for step in range(3):
            hq.add(range(3 + step, 4 + step), seed=step)
            hq.publisher.publish()
        assert kiosk.version < hq.catalog.version
        relay.up()
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, 3 * WAIT), kiosk.last_error
        assert kiosk.counters["snapshots"] == 0  # asked up the bridge, answered on its reply topic
        figures = searcher.stop()
        assert figures["failures"] == 0 and figures["searches"] > 0  # it kept serving throughout
        # The store broker restarts (persistence on): the kiosk reconnects and follows the next version.
        store.restart()
        hq.add(range(10, 12), seed=9)
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, 3 * WAIT), kiosk.last_error
        assert _goes_up(store, hq_broker, ["enroll", "withdraw", "resync"])
    finally:
        server.stop()
        hq.close()
