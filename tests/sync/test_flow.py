"""End-to-end sync against a real broker: deltas, duplicates, order, gaps, snapshots."""

from __future__ import annotations


from sync_helpers import WAIT, Hq


def at_version(version: int):
    return lambda k: k.version == version


def test_delta_reaches_a_seeded_kiosk(hq: Hq, kiosk_factory) -> None:
    hq.add(range(5))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq)
    version = hq.add(range(5, 8))
    hq.publisher.publish()
    assert kiosk.wait_for(at_version(version), WAIT), kiosk.last_error
    assert kiosk.counters["snapshots"] == 0
