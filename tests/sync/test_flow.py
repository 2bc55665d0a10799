"""End-to-end sync against a real broker: deltas, duplicates, order, gaps, snapshots, replays."""

from __future__ import annotations

from pathlib import Path

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.codec import encode_delta
from shelfsight.catalog.sync.envelope import (
    EnvelopeHeader,
    Signer,
    Verifier,
    generate_keys,
    load_signer,
)
from shelfsight.edge_app.kiosk.updates.releases import current_release
from shelfsight.edge_app.kiosk.updates.worker import KioskSync
from tests.support.broker import Broker
from tests.support.sync import WAIT, Hq, RunningServer, Tap


def at_version(version: int):
    return lambda k: k.version == version


def kiosk_records(kiosk: KioskSync) -> list[dict]:
    _, catalog_path = current_release(kiosk.data_dir)
    with Catalog(catalog_path, create=False) as catalog:
        return catalog.export_snapshot()["records"]


def start_following(kiosk: KioskSync, hq: Hq) -> None:
    """Start and wait until the kiosk has seen HQ's retained manifest (so its subscriptions are live)."""
    kiosk.start()
    assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, WAIT)


def capture_deltas(hq: Hq, broker: Broker, steps: list[range]) -> list[bytes]:
    """Publish one version per step and return the delta envelopes HQ sent, in order."""
    tap = Tap(broker, hq.topics.delta, client_id="delta-tap")
    try:
        for i, ids in enumerate(steps):
            hq.add(ids, seed=i + 1)
            hq.publisher.publish()
            assert tap.wait(lambda m, i=i: len(m) >= i + 1)
        return tap.payloads(hq.topics.delta)
    finally:
        tap.close()


def test_delta_reaches_a_seeded_kiosk(hq: Hq, kiosk_factory) -> None:
    hq.add(range(5))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq)
    version = hq.add(range(5, 8))
    hq.publisher.publish()
    assert kiosk.wait_for(at_version(version), WAIT), kiosk.last_error
    assert kiosk.counters["snapshots"] == 0
    assert kiosk_records(kiosk) == hq.catalog.export_snapshot()["records"]


def test_same_delta_ten_times_is_applied_once(hq: Hq, broker: Broker, kiosk_factory) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq)
    [delta] = capture_deltas(hq, broker, [range(3, 5)])
    assert kiosk.wait_for(at_version(hq.catalog.version), WAIT)
    tap = Tap(broker, client_id="replayer")
    for _ in range(10):
        tap.inject(hq.topics.delta, delta)
    tap.close()
    assert kiosk.wait_for(lambda k: k.counters["duplicates"] >= 10, WAIT)
    assert kiosk.counters["applied"] == 1
    assert kiosk.version == hq.catalog.version


def test_deltas_out_of_order_converge_without_snapshot(hq: Hq, broker: Broker, kiosk_factory) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq, start=False)
    base = hq.catalog.version
    deltas = capture_deltas(hq, broker, [range(3, 4), range(4, 6), range(0, 2)])
    kiosk.config = kiosk.config.model_copy(update={"hold_s": 60.0})
    start_following(kiosk, hq)
    assert kiosk.version == base
    tap = Tap(broker, client_id="reorderer")
    for delta in reversed(deltas):
        tap.inject(hq.topics.delta, delta)
    tap.close()
    assert kiosk.wait_for(at_version(hq.catalog.version), WAIT), kiosk.last_error
    assert kiosk.counters["held"] == 2
    assert kiosk.counters["snapshots"] == 0
    assert kiosk_records(kiosk) == hq.catalog.export_snapshot()["records"]


def test_missing_delta_is_detected_and_snapshot_fetched(hq: Hq, broker: Broker, kiosk_factory) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq, start=False)
    deltas = capture_deltas(hq, broker, [range(3, 4), range(4, 5), range(5, 6)])
    start_following(kiosk, hq)
    tap = Tap(broker, client_id="lossy")
    tap.inject(hq.topics.delta, deltas[0])
    tap.inject(hq.topics.delta, deltas[2])  # deltas[1] is lost
    tap.close()
    assert kiosk.wait_for(at_version(hq.catalog.version), WAIT), kiosk.last_error
    assert kiosk.counters["snapshots"] == 1
    assert kiosk_records(kiosk) == hq.catalog.export_snapshot()["records"]


def test_replayed_old_manifest_and_delta_are_refused(hq: Hq, broker: Broker, kiosk_factory) -> None:
    hq.add(range(3))
    tap = Tap(broker, hq.topics.manifest, client_id="recorder")
    hq.publisher.publish()
    assert tap.wait(lambda m: len(m) >= 1)
    old_manifest = tap.payloads(hq.topics.manifest)[0]
    kiosk = kiosk_factory("k1", hq=hq)
    [old_delta] = capture_deltas(hq, broker, [range(3, 5)])
    capture_deltas(hq, broker, [range(5, 6)])
    assert kiosk.wait_for(at_version(hq.catalog.version), WAIT)
    before = kiosk.counters["refused"]
    tap.inject(hq.topics.delta, old_delta)
    tap.inject(hq.topics.manifest, old_manifest)
    assert kiosk.wait_for(lambda k: k.counters["refused"] > before, WAIT)
    assert "replay" in (kiosk.last_error or "")
    assert kiosk.version == hq.catalog.version
    tap.close()


def forged_delta(signer: Signer, fleet: str, base: int, changes: list[dict]) -> bytes:
    header = EnvelopeHeader(kind="delta", fleet=fleet, seq=1, base=base, target=changes[-1]["version"])
    return signer.seal(header, encode_delta(changes))


def test_forged_tampered_and_foreign_updates_are_refused(
    hq: Hq, broker: Broker, kiosk_factory, tmp_path: Path, hq_keys: tuple[Signer, Verifier, Path]
) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq)
    base = hq.catalog.version
    before = kiosk_records(kiosk)
    # What an attacker would like the kiosk to apply: a valid-looking delta from the kiosk's version.
    with Catalog(tmp_path / "evil.db") as evil:
        evil.replace_with_snapshot(hq.catalog.export_snapshot())
        evil.update_product("p000001", name="Free TV")
        changes = evil.changes_since(base)
    other_key = load_signer(generate_keys(tmp_path / "other")[0])
    genuine = forged_delta(hq_keys[0], hq.topics.fleet, base, changes)
    tampered = bytearray(genuine)
    tampered[len(tampered) // 2] ^= 0x01
    attempts = [
        forged_delta(other_key, hq.topics.fleet, base, changes),  # re-signed with another key
        bytes(tampered),  # one bit flipped
        genuine[:-64],  # signature cut off
        b"\x00" * 10,  # not an envelope
        forged_delta(hq_keys[0], "other-fleet", base, changes),  # valid, but for another fleet
    ]
    tap = Tap(broker, client_id="attacker")
    for payload in attempts:
        tap.inject(hq.topics.delta, payload)
    tap.close()
    assert kiosk.wait_for(lambda k: k.counters["refused"] >= len(attempts), WAIT)
    assert kiosk.version == base
    assert kiosk_records(kiosk) == before
    assert kiosk.counters["applied"] == 0


def test_corrupted_and_truncated_chunks_are_refetched(
    hq: Hq, broker: Broker, kiosk_factory, hq_keys: tuple[Signer, Verifier, Path]
) -> None:
    hq.add(range(2))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq, start=False)
    hq.publisher.chunk_bytes = 1024
    hq.publisher.max_message_bytes = 2048  # no delta fits: the kiosk must take the snapshot
    hq.add(range(2, 120))
    server = RunningServer(hq, hq_keys[0])  # answers the kiosk's request to resend the bad chunks
    try:
        assert server.server.published.wait(WAIT)
        manifest = server.publisher.publish(force=True)
        assert manifest is not None and len(manifest.snapshot.chunks) >= 3
        snapshot = manifest.snapshot
        tap = Tap(broker, client_id="vandal")
        tap.inject(hq.topics.blob_chunk(snapshot.blob_id, 0), b"garbage" * 100, retain=True)
        tap.inject(hq.topics.blob_chunk(snapshot.blob_id, 1), b"short", retain=True)
        tap.close()
        kiosk.start()
        assert kiosk.wait_for(at_version(hq.catalog.version), WAIT), kiosk.last_error
    finally:
        server.stop()
    assert kiosk.counters["snapshots"] == 1
    assert kiosk_records(kiosk) == hq.catalog.export_snapshot()["records"]


def test_chunks_a_kiosk_cannot_receive_are_reported_and_a_republish_recovers_it_without_restart(
    hq: Hq, broker: Broker, kiosk_factory
) -> None:
    # A kiosk left on a 16 KiB receive limit; HQ publishes 32 KiB chunks (the broker would carry them).
    small = {"max_packet_bytes": 16 * 1024, "max_message_bytes": 8 * 1024}
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq, **small)
    assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, WAIT)
    status = Tap(broker, hq.topics.status("k1"), client_id="watcher")
    hq.publisher.chunk_bytes = 32 * 1024
    hq.publisher.max_message_bytes = 1024  # no delta: the snapshot is the only way
    hq.add(range(3, 400))
    hq.publisher.publish()
    assert kiosk.wait_for(lambda k: "receive limit" in (k.last_error or ""), WAIT), kiosk.last_error
    assert status.wait(lambda ms: any(b"receive limit" in m.payload for m in ms))
    status.close()
    # Two restarts on the same persistent session: nothing it queued wedges the kiosk.
    for _ in range(2):
        kiosk.stop()
        kiosk = kiosk_factory("k1", **small)
        assert kiosk.wait_for(lambda k: "receive limit" in (k.last_error or ""), WAIT), kiosk.last_error
    # HQ republishes in chunks the kiosk can take (same content, same blob id): it converges, no restart.
    hq.publisher.chunk_bytes = 4 * 1024
    hq.publisher.publish(force=True)
    assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error
    assert kiosk_records(kiosk) == hq.catalog.export_snapshot()["records"]


def test_same_version_different_content_is_detected_and_repaired(hq: Hq, kiosk_factory) -> None:
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq, start=False)
    # Someone edits the kiosk's synced catalog behind sync's back, reaching HQ's next version number...
    _, path = current_release(kiosk.data_dir)
    with Catalog(path, create=False) as local:
        local.add_product("rogue", "Not from HQ")
        local.update_product("rogue", name="Still not from HQ")
    # ...while HQ moves to the same number with other content.
    version = hq.add(range(3, 4))
    hq.publisher.publish()
    kiosk.start()
    assert kiosk.wait_for(lambda k: k.counters["snapshots"] == 1, WAIT), kiosk.last_error
    assert kiosk.version == version
    assert kiosk_records(kiosk) == hq.catalog.export_snapshot()["records"]
