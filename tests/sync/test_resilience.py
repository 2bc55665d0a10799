"""Sync under failure: broker killed mid-transfer, queue overflow while offline, disk full; search keeps working."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.envelope import Signer, Verifier
from shelfsight.edge_app.kiosk.updates.releases import current_release
from tests.support.broker import Broker
from tests.support.sync import WAIT, Hq, RunningServer, Searcher, Tap


def test_broker_killed_mid_transfer_kiosk_converges_and_keeps_searching(
    hq: Hq, broker: Broker, kiosk_factory, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    hq.publisher.chunk_bytes = 512
    hq.publisher.max_message_bytes = 2048  # force the snapshot path: many chunks to interrupt
    kiosk = kiosk_factory("k1", hq=hq, start=False)
    searcher = Searcher(kiosk.data_dir)
    kiosk = kiosk_factory("k1", hooks={"on_applied": searcher.on_applied})
    hq.add(range(3, 200))
    server = RunningServer(hq, hq_keys[0], poll_s=0.2)
    try:
        assert kiosk.wait_for(
            lambda k: k.fetching is not None and k.fetching[1] > 0 or k.version == hq.catalog.version, WAIT
        )
        broker.restart(hard=True)  # kill -9: retained chunks since the last autosave may be gone
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, 3 * WAIT), kiosk.last_error
    finally:
        server.stop()
    figures = searcher.stop()
    assert figures["failures"] == 0 and figures["searches"] > 0
    _, path = current_release(kiosk.data_dir)
    with Catalog(path, create=False) as catalog:
        assert catalog.export_snapshot()["records"] == hq.catalog.export_snapshot()["records"]


def test_offline_kiosk_converges_after_broker_dropped_its_queue(
    broker_factory, tmp_path: Path, hq_keys, kiosk_factory
) -> None:
    small_queue = broker_factory(max_queued_messages=3)
    hq = Hq(tmp_path / "hq-q", small_queue, hq_keys[0])
    try:
        hq.add(range(3))
        hq.publisher.publish()
        kiosk = kiosk_factory("k1", hq=hq, on=small_queue)
        assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, WAIT)
        kiosk.stop()  # offline; the broker keeps its session and queues at most 3 messages
        for step in range(10):
            hq.add(range(3 + step, 4 + step), seed=step)
            hq.publisher.publish()
        again = kiosk_factory("k1", on=small_queue)
        assert again.wait_for(lambda k: k.version == hq.catalog.version, WAIT), again.last_error
    finally:
        hq.close()


def tight_catalog(path: Path) -> Catalog:
    """A catalog whose file may grow by only two pages: the next big write hits SQLITE_FULL, like a full disk."""
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    return Catalog(conn)


def test_disk_full_during_apply_rolls_back_and_reports(hq: Hq, broker: Broker, kiosk_factory) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq, hooks={"open_catalog": tight_catalog})
    searcher = Searcher(kiosk.data_dir)
    status = Tap(broker, hq.topics.status("k1"), client_id="watcher")
    before = kiosk.version
    hq.add(range(3, 60))
    hq.publisher.publish()
    assert kiosk.wait_for(lambda k: "full" in (k.last_error or ""), WAIT)
    assert status.wait(lambda ms: any(b"full" in m.payload for m in ms))
    last = json.loads(status.messages[-1].payload)
    assert last["catalog_version"] == before and "full" in last["last_error"]
    status.close()
    figures = searcher.stop()
    assert figures["failures"] == 0
    assert kiosk.version == before
    _, path = current_release(kiosk.data_dir)
    with Catalog(path, create=False) as catalog:
        assert catalog.version == before
        assert catalog.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert catalog.search(searcher._query, k=1)
