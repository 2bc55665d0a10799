"""The sync rules, fast: HQ and kiosks in one process on the in-memory broker (`transport.memory`).

Each rule of docs/sync.md is checked here in well under a second, with the kiosk's
phase (`worker.Phase`) asserted after each step; the end-to-end tests beside this file
run the same rules against a real Mosquitto through paho. HQ answers resync requests
only when a test calls `hq.serve()`, and `hold_s` is long unless a test shortens it,
so nothing here depends on timing.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pydantic import ValidationError

from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.hq.publisher import HqServer, ResyncLimits
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.codec import LatestManifest, encode_delta
from shelfsight.catalog.sync.envelope import EnvelopeHeader, Signer, Verifier, generate_keys, load_signer
from shelfsight.catalog.sync.messages import EnrolledFrame, Enrollment, ResyncRequest, Withdrawal
from shelfsight.catalog.sync.transport.base import Message, Will
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.catalog.sync.transport.memory import InMemoryBus, MemoryBroker, topic_matches
from shelfsight.edge_app.core.errors import InputError, SyncError
from shelfsight.edge_app.kiosk.updates.config import SyncConfig
from shelfsight.edge_app.kiosk.updates.releases import current_release
from shelfsight.edge_app.kiosk.updates.state import SyncState
from shelfsight.edge_app.kiosk.updates.worker import TRANSITIONS, KioskSync, Phase
from tests.support.sync import FLEET, MemoryHq, seed_kiosk

LIMIT = 5.0  # upper bound for the kiosk's worker thread to get somewhere; not a speed assertion
Keys = tuple[Signer, Verifier, Path]


@dataclass
class Store:
    """A kiosk under test: its sync, the phases it went through, its bus."""

    sync: KioskSync
    phases: list[Phase] = field(default_factory=list)
    buses: list[InMemoryBus] = field(default_factory=list)

    @property
    def bus(self) -> InMemoryBus:
        return self.buses[-1]

    def reach(self, phase: Phase, version: int | None = None) -> None:
        """Wait until the kiosk is in `phase` (at `version`); fail with where it is instead."""
        ok = self.sync.wait_for(lambda k: k.phase is phase and (version is None or k.version == version), LIMIT)
        assert ok, (self.sync.phase, self.sync.version, self.sync.last_error, self.phases)

    def records(self) -> list[dict[str, Any]]:
        _, path = current_release(self.sync.data_dir)
        with Catalog(path, create=False) as catalog:
            return catalog.export_snapshot()["records"]


class Recorder:
    """A plain client on the in-memory broker: records what it sees, injects raw bytes (observer or attacker)."""

    def __init__(self, broker: MemoryBroker, topic_filter: str | None = None, client_id: str = "recorder") -> None:
        self.broker = broker
        self.messages: list[Message] = []
        self.bus = InMemoryBus(broker, client_id=client_id, on_message=self._got, persistent=False)
        if topic_filter is not None:
            self.bus.subscribe(topic_filter)
        self.bus.connect()

    def _got(self, message: Message) -> None:
        self.messages.append(message)
        self.bus.ack(message)

    def payloads(self) -> list[bytes]:
        self.broker.drain()
        return [m.payload for m in self.messages if m.payload]

    def inject(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.bus.publish(topic, payload, retain=retain)
        self.broker.drain()


@pytest.fixture
def memory_broker() -> Iterator[MemoryBroker]:
    with MemoryBroker() as broker:
        yield broker


@pytest.fixture
def hq(tmp_path: Path, memory_broker: MemoryBroker, hq_keys: Keys) -> Iterator[MemoryHq]:
    """HQ with a published master of 3 products (shadows conftest's Mosquitto `hq`)."""
    central = MemoryHq(tmp_path / "hq", memory_broker, hq_keys[0])
    central.add(range(3))
    central.publisher.publish()
    yield central
    central.close()


@pytest.fixture
def stores(tmp_path: Path, memory_broker: MemoryBroker, hq: MemoryHq, hq_keys: Keys) -> Iterator[Callable[..., Store]]:
    made: list[Store] = []

    def make(
        kiosk_id: str = "k1",
        *,
        on_applied: Callable[[int], None] | None = None,
        hooks: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Store:
        """A kiosk seeded with HQ's current master (not started); `overrides` go to its SyncConfig, `hooks` to it."""
        data_dir = tmp_path / "kiosks" / kiosk_id
        seed_kiosk(data_dir, hq)
        values: dict[str, Any] = dict(fleet=FLEET, kiosk_id=kiosk_id, public_key=hq_keys[2], hold_s=60.0)
        phases: list[Phase] = []
        buses: list[InMemoryBus] = []

        def bus_factory(config: BrokerConfig, **kwargs: Any) -> InMemoryBus:
            buses.append(memory_broker.open_bus(config, **kwargs))
            return buses[-1]

        sync = KioskSync(
            SyncConfig(**{**values, **overrides}),
            data_dir,
            bus_factory=bus_factory,
            on_applied=on_applied,
            on_phase=lambda old, new: phases.append(new),
            **(hooks or {}),
        )
        made.append(Store(sync, phases, buses))
        return made[-1]

    yield make
    for store in made:
        store.sync.stop()


def publish_steps(hq: MemoryHq, broker: MemoryBroker, steps: list[range]) -> list[bytes]:
    """Publish one version per step (while no kiosk listens) and return HQ's delta envelopes, in order."""
    tap = Recorder(broker, hq.topics.delta, client_id="delta-tap")
    for i, ids in enumerate(steps):
        hq.add(ids, seed=i + 1)
        hq.publisher.publish()
    deltas = tap.payloads()
    assert len(deltas) == len(steps)
    tap.bus.close()
    return deltas


def sealed(signer: Signer, header: EnvelopeHeader, payload: bytes) -> bytes:
    return signer.seal(header, payload)


# -- versions: replays, order, gaps, divergence ---------------------------------------------


def test_replayed_manifest_and_repeated_delta_change_nothing(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store], hq_keys: Keys
) -> None:
    old_manifest = memory_broker.retained(hq.topics.manifest)
    assert old_manifest is not None
    old = hq.catalog.version
    kiosk = stores()
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, old)
    tap = Recorder(memory_broker, hq.topics.delta, client_id="replayer")
    new = hq.add(range(3, 5), seed=1)
    hq.publisher.publish()
    kiosk.reach(Phase.CURRENT, new)
    [delta] = tap.payloads()
    for _ in range(10):
        tap.inject(hq.topics.delta, delta)
    tap.inject(hq.topics.manifest, old_manifest)  # a lower sequence number than the accepted one
    # A higher sequence number, but a version older than the kiosk's catalog for the same model: also a replay.
    state = hq.publisher.load_state()
    assert state is not None and state.snapshot is not None
    stale = LatestManifest(version=old, model_fingerprint=hq.fingerprint, snapshot=state.snapshot, delta_floor=old)
    header = EnvelopeHeader(kind="manifest", fleet=hq.topics.fleet, seq=state.seq + 1000)
    tap.inject(hq.topics.manifest, sealed(hq_keys[0], header, stale.model_dump_json().encode()))
    assert kiosk.sync.wait_for(lambda k: k.counters["refused"] >= 2 and k.counters["duplicates"] >= 10, LIMIT)
    assert kiosk.sync.counters["applied"] == 1 and kiosk.sync.counters["duplicates"] == 10
    assert kiosk.sync.counters["refused"] == 2
    assert "older than ours" in (kiosk.sync.last_error or "")
    assert kiosk.sync.version == new and kiosk.sync.phase is Phase.CURRENT
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]


def test_out_of_order_delta_is_held_until_its_base_arrives(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    base = hq.catalog.version
    kiosk = stores()
    first, second = publish_steps(hq, memory_broker, [range(3, 4), range(4, 6)])
    kiosk.sync.start()
    kiosk.reach(Phase.BEHIND, base)  # the retained manifest names a later version; no delta yet
    tap = Recorder(memory_broker, client_id="reorderer")
    tap.inject(hq.topics.delta, second)
    kiosk.reach(Phase.HOLDING, base)
    assert kiosk.sync.counters["held"] == 1 and kiosk.sync.counters["applied"] == 0
    tap.inject(hq.topics.delta, first)
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    assert kiosk.sync.counters["applied"] == 2 and kiosk.sync.counters["snapshots"] == 0
    assert kiosk.phases == [Phase.WAITING, Phase.BEHIND, Phase.HOLDING, Phase.CURRENT]
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]


def test_gap_asks_hq_for_a_delta_then_takes_the_snapshot(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    base = hq.catalog.version
    kiosk = stores()
    _, second = publish_steps(hq, memory_broker, [range(3, 4), range(4, 6)])  # the kiosk never sees the first
    kiosk.sync.start()
    kiosk.reach(Phase.BEHIND, base)
    Recorder(memory_broker, client_id="lossy").inject(hq.topics.delta, second)
    kiosk.reach(Phase.HOLDING, base)
    assert hq.resync_requests() == [{"kiosk_id": "k1", "from_version": base}]
    # HQ does not answer (it is down, say); once hold_s is over the kiosk stops waiting for the missing delta.
    kiosk.sync.config = kiosk.sync.config.model_copy(update={"hold_s": 0.05})
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    assert kiosk.phases == [Phase.WAITING, Phase.BEHIND, Phase.HOLDING, Phase.FETCHING, Phase.INSTALLING, Phase.CURRENT]
    assert kiosk.sync.counters["snapshots"] == 1 and kiosk.sync.counters["applied"] == 1
    assert hq.resync_requests() == [{"kiosk_id": "k1", "from_version": base}]  # asked once, not on every tick
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]


def test_kiosk_below_the_delta_floor_takes_the_snapshot_at_once(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    kiosk = stores()
    hq.add(range(3, 5), seed=1)
    hq.publisher.publish()
    hq.publisher.state_path.unlink()  # HQ lost its bookkeeping: no delta, and the floor moves to its version
    hq.add(range(5, 6), seed=2)
    hq.publisher.publish()
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    assert Phase.BEHIND not in kiosk.phases and Phase.FETCHING in kiosk.phases
    assert hq.resync_requests() == []
    assert kiosk.sync.counters["snapshots"] == 1


def test_same_version_with_other_content_takes_the_snapshot(hq: MemoryHq, stores: Callable[..., Store]) -> None:
    kiosk = stores()
    version = hq.add(range(3, 4), seed=1)
    hq.publisher.publish()
    # Someone edits the kiosk's synced catalog behind sync's back until it has HQ's version number, other rows.
    _, path = current_release(kiosk.sync.data_dir)
    with Catalog(path, create=False) as local:
        local.add_product("rogue", "Not from HQ")
        while local.version < version:
            local.update_product("rogue", name=f"Still not from HQ {local.version}")
        assert local.version == version
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, version)
    assert kiosk.phases == [Phase.WAITING, Phase.FETCHING, Phase.INSTALLING, Phase.CURRENT]
    assert kiosk.sync.counters["snapshots"] == 1
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]


# -- resync requests and HQ's answers ----------------------------------------------------------------


def test_hq_answers_each_resync_to_the_asker_alone_within_its_budget(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    base = hq.catalog.version
    fleet = [stores("k1"), stores("k2")]
    publish_steps(hq, memory_broker, [range(3, 4), range(4, 6)])  # both kiosks miss these deltas
    for kiosk in fleet:
        kiosk.sync.start()
        kiosk.reach(Phase.BEHIND, base)
    # The kiosk asks once per manifest: the same manifest again asks nothing; a reconnect asks again.
    manifest = memory_broker.retained(hq.topics.manifest)
    assert manifest is not None
    Recorder(memory_broker, client_id="echo").inject(hq.topics.manifest, manifest)
    fleet[0].bus.drop()
    fleet[0].bus.connect()
    assert fleet[0].sync.wait_for(lambda k: len(hq.resync_requests()) >= 3, LIMIT)
    broadcast = Recorder(memory_broker, hq.topics.delta, client_id="delta-tap")
    replies = Recorder(memory_broker, f"{hq.topics.root}/reply/+/delta", client_id="reply-tap")
    assert hq.serve() == 3
    # Each answer goes to the kiosk that asked, on its own topic; nothing is broadcast to the fleet.
    assert sorted(m.topic.split("/")[-2] for m in replies.messages) == ["k1", "k1", "k2"]
    assert broadcast.payloads() == []
    for kiosk in fleet:
        kiosk.reach(Phase.CURRENT, hq.catalog.version)
        assert kiosk.sync.counters["snapshots"] == 0
    assert {r["from_version"] for r in hq.resync_requests()} == {base}
    # A kiosk gets at most `deltas` delta answers per window, however often it asks.
    hq.publisher.resync_limits = ResyncLimits(deltas=2)
    asker = Recorder(memory_broker, client_id="k3")
    question = ResyncRequest(kiosk_id="k3", from_version=base).model_dump_json(exclude_defaults=True).encode()
    for _ in range(5):
        asker.inject(hq.topics.resync("k3"), question)
    hq.serve()
    assert sum(m.topic == hq.topics.reply_delta("k3") for m in replies.messages) == 2
    current = ResyncRequest(kiosk_id="k4", from_version=hq.catalog.version).model_dump_json().encode()
    asker.inject(hq.topics.resync("k4"), current)
    hq.serve()
    assert not any(m.topic == hq.topics.reply_delta("k4") for m in replies.messages)  # nothing newer: no answer


def test_delta_redelivered_after_a_reconnect_is_a_no_op(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    dropped: list[int] = []

    def lose_connection_before_the_ack(version: int) -> None:
        # on_applied runs after the commit and before the ack: the broker still holds the delta.
        if not dropped:
            dropped.append(memory_broker.unacked("k1"))
            kiosk.bus.drop()
            kiosk.bus.connect()

    kiosk = stores(on_applied=lose_connection_before_the_ack)
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    version = hq.add(range(3, 5), seed=1)
    hq.publisher.publish()
    assert kiosk.sync.wait_for(lambda k: k.counters["duplicates"] >= 1, LIMIT)
    kiosk.reach(Phase.CURRENT, version)
    assert dropped and dropped[0] >= 1
    assert kiosk.sync.counters["applied"] == 1 and kiosk.sync.counters["duplicates"] == 1
    memory_broker.drain()
    assert kiosk.sync.wait_for(lambda k: memory_broker.unacked("k1") == 0, LIMIT)  # acknowledged in the end


# -- signatures ------------------------------------------------------------------------------------


def test_bad_signatures_and_unknown_keys_are_refused_and_the_catalog_kept(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store], tmp_path: Path, hq_keys: Keys
) -> None:
    base = hq.catalog.version
    kiosk = stores()
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, base)
    before = kiosk.records()
    with Catalog(tmp_path / "evil.db") as evil:
        evil.replace_with_snapshot(hq.catalog.export_snapshot())
        evil.update_product("p000001", name="Free TV")
        changes = evil.changes_since(base)
    other_private, other_public = generate_keys(tmp_path / "other")
    other = load_signer(other_private)
    header = EnvelopeHeader(kind="delta", fleet=FLEET, seq=1, base=base, target=changes[-1]["version"])
    genuine = sealed(hq_keys[0], header, encode_delta(changes))
    flipped = bytearray(genuine)
    flipped[len(flipped) // 2] ^= 1
    state = hq.publisher.load_state()
    assert state is not None and state.snapshot is not None
    bigger = LatestManifest(
        version=base + 5, model_fingerprint=hq.fingerprint, snapshot=state.snapshot, delta_floor=base + 5
    )
    manifest_header = EnvelopeHeader(kind="manifest", fleet=FLEET, seq=state.seq + 1)
    attacks = [
        (hq.topics.delta, sealed(other, header, encode_delta(changes))),  # signed with another key
        (hq.topics.delta, bytes(flipped)),
        (hq.topics.delta, genuine[:-64]),  # signature cut off
        (hq.topics.delta, sealed(hq_keys[0], header.model_copy(update={"fleet": "other"}), encode_delta(changes))),
        (hq.topics.manifest, sealed(other, manifest_header, bigger.model_dump_json().encode())),
    ]
    attacker = Recorder(memory_broker, client_id="attacker")
    for topic, payload in attacks:
        attacker.inject(topic, payload)
    assert kiosk.sync.wait_for(lambda k: k.counters["refused"] >= len(attacks), LIMIT)
    assert kiosk.sync.counters["refused"] == len(attacks) and kiosk.sync.counters["applied"] == 0
    assert kiosk.sync.version == base and kiosk.sync.target_version == base
    assert kiosk.sync.phase is Phase.CURRENT
    assert kiosk.records() == before
    # A kiosk that trusts another key refuses even HQ's genuine updates, and keeps serving the catalog it has.
    stranger = stores("k2", public_key=other_public)
    stranger.sync.start()
    version = hq.add(range(3, 5), seed=1)
    hq.publisher.publish()
    assert stranger.sync.wait_for(lambda k: k.counters["refused"] >= 2, LIMIT)  # retained manifest, new delta, ...
    assert "bad signature" in (stranger.sync.last_error or "")
    assert stranger.sync.version == base < version and stranger.sync.phase is Phase.WAITING
    assert stranger.records() == before


# -- phases ---------------------------------------------------------------------------------------


def test_chunks_the_broker_cannot_carry_stall_the_kiosk_and_are_reported(tmp_path: Path, hq_keys: Keys) -> None:
    with MemoryBroker(max_packet_bytes=8 * 1024) as small:
        status = Recorder(small, f"shelfsight/{FLEET}/status/+", client_id="watcher")
        central = MemoryHq(tmp_path / "hq-small", small, hq_keys[0], chunk_bytes=32 * 1024)
        try:
            central.add(range(50))
            with pytest.raises(SyncError, match="do not fit"):  # HQ refuses to publish them itself
                central.publisher.publish()
            central.publisher.chunk_bytes = 4 * 1024
            central.publisher.publish()
            good = central.publisher.load_state()
            assert good is not None and good.snapshot is not None
            # A manifest naming oversized chunks (an HQ behind another broker, say) reaches the kiosk anyway.
            big = good.snapshot.model_copy(update={"chunk_size": 32 * 1024, "chunks": good.snapshot.chunks[:1]})
            big = big.model_copy(update={"size": 100})
            manifest = LatestManifest(
                version=good.version + 5,
                model_fingerprint=central.fingerprint,
                snapshot=big,
                delta_floor=good.version + 5,
            )
            header = EnvelopeHeader(kind="manifest", fleet=FLEET, seq=good.seq + 1)
            payload = sealed(hq_keys[0], header, manifest.model_dump_json().encode())
            status.inject(central.topics.manifest, payload, retain=True)
            data_dir = tmp_path / "k-small"
            seed_kiosk(data_dir, central)
            config = SyncConfig(fleet=FLEET, kiosk_id="k-small", public_key=hq_keys[2], hold_s=60.0)
            kiosk = KioskSync(config, data_dir, bus_factory=small.open_bus)
            kiosk.start()
            try:
                assert kiosk.wait_for(lambda k: k.phase is Phase.STALLED, LIMIT), (kiosk.phase, kiosk.last_error)
                assert "do not fit" in (kiosk.progress.reason or "")
                assert "do not fit" in (kiosk.last_error or "")
                assert kiosk.fetching is None
                reported = [json.loads(p) for p in status.payloads()]
                assert any("do not fit" in (r.get("last_error") or "") for r in reported)
            finally:
                kiosk.stop()
            assert kiosk.phase is Phase.STOPPED
        finally:
            central.close()


def test_the_transition_table_is_enforced(tmp_path: Path, hq_keys: Keys) -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert [p for p, later in TRANSITIONS.items() if Phase.INSTALLING in later] == [Phase.FETCHING]
    assert [p for p, later in TRANSITIONS.items() if Phase.WAITING in later] == [Phase.STOPPED, Phase.HOLDING]
    assert all(Phase.STOPPED in TRANSITIONS[p] for p in Phase if p is not Phase.STOPPED)
    kiosk = KioskSync(SyncConfig(public_key=hq_keys[2]), tmp_path / "k", verifier=hq_keys[1])
    assert kiosk.phase is Phase.STOPPED
    with pytest.raises(RuntimeError, match="no transition from stopped to installing"):
        kiosk._enter(Phase.INSTALLING)  # noqa: SLF001 - the guard itself
    assert kiosk.phase is Phase.STOPPED


# -- the in-memory broker itself ------------------------------------------------------------------


def test_memory_broker_filters_retains_and_redelivers_unacknowledged_messages() -> None:
    assert topic_matches("a/+/c", "a/b/c") and topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/+", "a/b/c") and not topic_matches("#", "$SYS/x") and not topic_matches("a/b", "a")
    with MemoryBroker(max_packet_bytes=1024) as broker:
        seen: list[Any] = []
        sender = InMemoryBus(broker, client_id="sender", on_message=seen.append, persistent=False)
        sender.connect()
        sender.publish("s/kept", b"retained", retain=True)
        will = Will("s/status", b"gone", retain=False)
        client = InMemoryBus(
            broker, client_id="c", on_message=seen.append, on_connect=lambda present: seen.append(present), will=will
        )
        client.subscribe("s/#")
        watcher = Recorder(broker, "s/status")
        client.connect()
        broker.drain()
        assert seen[0] is False and [(m.topic, m.retain) for m in seen[1:]] == [("s/kept", True)]
        sender.publish("s/live", b"1")
        broker.drain()
        assert (seen[-1].topic, seen[-1].retain, seen[-1].qos) == ("s/live", False, 1)
        client.ack(seen[1])  # s/live stays unacknowledged
        client.drop()  # lost, not closed: the will goes out, the session stays
        sender.publish("s/queued", b"2")
        assert watcher.payloads() == [b"gone"]
        seen.clear()
        client.connect()
        broker.drain()
        assert seen[0] is True  # session present
        # Resent (unacknowledged), queued while away (its own will included: it subscribed to s/#), retained again.
        assert [m.topic for m in seen[1:]] == ["s/live", "s/status", "s/queued", "s/kept"]
        for message in seen[1:]:
            client.ack(message)
        assert broker.unacked("c") == 0
        sender.publish("s/kept", b"", retain=True)  # an empty retained payload clears the topic
        assert broker.retained("s/kept") is None
        with pytest.raises(SyncError, match="maximum packet size"):
            sender.publish("s/big", b"x" * 2000)
        with pytest.raises(SyncError, match="not a valid topic filter"):
            client.subscribe("s/#/x")
        client.close()
        assert watcher.payloads() == [b"gone"]  # a clean close publishes no will
        with pytest.raises(SyncError, match="not connected"):
            client.publish("s/x", b"", timeout=1)


# -- limits: chunks a kiosk cannot receive ---------------------------------------------------------


def test_chunks_over_the_kiosks_own_limit_are_reported_and_a_smaller_republish_recovers(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    # The kiosk receives 16 KiB packets; the broker (1 MiB) would carry HQ's 32 KiB chunks and drop them on the way.
    kiosk = stores("k1", max_packet_bytes=16 * 1024, max_message_bytes=8 * 1024)
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    status = Recorder(memory_broker, hq.topics.status("k1"), client_id="watcher")
    hq.publisher.chunk_bytes = 32 * 1024
    hq.publisher.max_message_bytes = 1024  # no delta: the kiosk is below the floor and needs the snapshot
    hq.add(range(3, 400))
    manifest = hq.publisher.publish()
    assert manifest is not None and manifest.snapshot.size > 16 * 1024
    kiosk.reach(Phase.STALLED)
    assert "receive limit" in (kiosk.sync.last_error or "")
    assert any("receive limit" in (json.loads(p).get("last_error") or "") for p in status.payloads())
    # HQ republishes the same content in chunks the kiosk can take: same blob id, new chunk size. No restart.
    hq.publisher.chunk_bytes = 4 * 1024
    hq.publisher.publish(force=True)
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]
    # The mismatch of limits stays in its status: the broker could still hand it other packets it refuses.
    assert "accepts packets up to" in (json.loads(status.payloads()[-1]).get("last_error") or "")


# -- resync amplification --------------------------------------------------------------------------


def test_resync_answers_collapse_duplicates_and_stay_within_the_kiosks_budget(
    hq: MemoryHq, memory_broker: MemoryBroker
) -> None:
    hq.publisher.chunk_bytes = 1024
    hq.add(range(3, 60))
    manifest = hq.publisher.publish(force=True)
    assert manifest is not None and len(manifest.snapshot.chunks) >= 4
    blob = manifest.snapshot.blob_id
    fleet_chunks = Recorder(memory_broker, f"{hq.topics.root}/catalog/blob/#", client_id="fleet")
    memory_broker.drain()
    fleet_chunks.messages.clear()  # the retained chunks every subscriber gets at once
    replies = Recorder(memory_broker, f"{hq.topics.root}/reply/#", client_id="replies")
    asker = Recorder(memory_broker, client_id="k9")

    def ask(chunks: list[int]) -> int:
        before = sum(len(m.payload) for m in replies.messages)
        request = ResyncRequest(kiosk_id="k9", blob_id=blob, chunks=chunks).model_dump_json().encode()
        asker.inject(hq.topics.resync("k9"), request)
        hq.serve()
        return sum(len(m.payload) for m in replies.messages) - before

    # 256 copies of one index: one chunk, to the asker alone.
    assert ask([0] * 256) == 1024
    assert {m.topic for m in replies.messages} == {hq.topics.reply_chunk("k9", blob, 0)}
    assert fleet_chunks.payloads() == []
    # A byte budget of three chunks per window (one is spent): two more, whatever is asked.
    hq.publisher.resync_limits = ResyncLimits(bytes=3 * 1024)
    assert ask(list(range(len(manifest.snapshot.chunks)))) == 2 * 1024
    assert ask([1]) == 0
    # A request budget: the sixth request in a window gets nothing.
    hq.publisher.resync_limits = ResyncLimits(requests=5)
    hq.publisher._allowances.clear()  # noqa: SLF001 - a new window
    assert [ask([i % 2]) > 0 for i in range(6)] == [True] * 5 + [False]


# -- a full disk -----------------------------------------------------------------------------------


class FullDisk:
    """The write seam: while `full`, every write of the kiosk's catalog and sync state fails with ENOSPC."""

    def __init__(self) -> None:
        self.full = False
        self.failed = 0

    def check(self) -> None:
        if self.full:
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    def state(self, path: Path) -> SyncState:
        disk = self

        class State(SyncState):
            def set(self, key: str, value: Any) -> None:
                disk.check()
                super().set(key, value)

            def hold(self, base: int, target: int, envelope: bytes) -> bool:
                disk.check()
                return super().hold(base, target, envelope)

        return State(path)

    def catalog(self, path: Path) -> Catalog:
        disk = self

        class Full(Catalog):
            def apply_changes(self, *args: Any, **kwargs: Any) -> None:
                disk.check()
                super().apply_changes(*args, **kwargs)

            def replace_with_snapshot(self, *args: Any, **kwargs: Any) -> None:
                disk.check()
                super().replace_with_snapshot(*args, **kwargs)

        return Full(path)


def test_a_full_disk_acknowledges_nothing_unwritten_and_catches_up_when_space_returns(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    disk = FullDisk()
    kiosk = stores("k1", hooks={"open_state": disk.state, "open_catalog": disk.catalog})
    kiosk.sync.start()
    base = hq.catalog.version
    kiosk.reach(Phase.CURRENT, base)
    disk.full = True
    hq.add(range(3, 5))
    hq.publisher.publish()  # a delta and a manifest that cannot be written
    assert kiosk.sync.wait_for(lambda k: "No space left" in (k.last_error or ""), LIMIT)
    assert kiosk.sync.wait_for(lambda k: disk.failed >= 3, LIMIT)  # tried again on its own
    assert memory_broker.unacked("k1") == 2  # neither was acknowledged
    assert kiosk.sync.version == base
    disk.full = False  # space returns; HQ publishes nothing more
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    # The manifest is written (and acknowledged) right after the delta.
    assert kiosk.sync.wait_for(lambda k: k.target_version == hq.catalog.version, LIMIT)
    assert kiosk.sync.wait_for(lambda k: memory_broker.unacked("k1") == 0, LIMIT)
    assert kiosk.sync.last_error is None
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]


# -- the content digest ----------------------------------------------------------------------------


def test_a_row_edited_in_place_is_detected_and_replaced_with_hqs(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    kiosk = stores("k1")
    version = hq.catalog.version
    _, path = current_release(kiosk.sync.data_dir)
    with Catalog(path, create=False) as local:  # same id, same row version, other content
        with local.batch():
            local.db.execute("UPDATE products SET name = 'Edited at the store', price = 0 WHERE id = 'p000001'")
        assert local.version == version
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, version)
    assert kiosk.sync.counters["snapshots"] == 1
    assert kiosk.records() == hq.catalog.export_snapshot()["records"]


def test_existing_kiosks_converge_under_the_content_digest_and_older_ones_can_read_a_legacy_manifest(
    hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store], hq_keys: Keys
) -> None:
    # A kiosk whose catalog holds HQ's rows (seeded before HQ had the content digest) computes the same digest:
    # no snapshot, straight to current.
    kiosk = stores("k1")
    manifest = hq.publisher.publish(force=True)
    assert manifest is not None and manifest.content_digest is not None and manifest.digest is not None
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    assert kiosk.phases == [Phase.WAITING, Phase.CURRENT] and kiosk.sync.counters["snapshots"] == 0
    # With content_digest=False the manifest has exactly the keys the previous release knows (it refuses others).
    hq.publisher.content_digest = False
    legacy = hq.publisher.publish(force=True)
    assert legacy is not None and legacy.content_digest is None
    payload = memory_broker.retained(hq.topics.manifest)
    assert payload is not None
    envelope = hq_keys[1].open(payload, max_bytes=1 << 20)
    previous_release_keys = {"version", "model_fingerprint", "snapshot", "release", "delta_floor", "digest"}
    assert set(json.loads(envelope.payload)) <= previous_release_keys
    memory_broker.drain()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)  # the row digest still matches
    assert kiosk.sync.counters["snapshots"] == 0


# -- enrollments: what the clerk typed reaches HQ ---------------------------------------------


def test_an_enrollment_carries_the_clerks_price_and_description_into_approve(
    tmp_path: Path, hq: MemoryHq, memory_broker: MemoryBroker, stores: Callable[..., Store]
) -> None:
    inbox = EnrollmentInbox(tmp_path / "inbox.db")
    hq.server = HqServer(on_enrollment=inbox.add)  # `hq serve --inbox`'s handler
    hq.bus.subscribe(hq.topics.all_of("enroll"))
    kiosk = stores("k1")
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    frame = EnrolledFrame(embedding=[1.0] + [0.0] * (hq.dim - 1), fingerprint=hq.fingerprint)

    def enrollment(product_id: str, **typed: Any) -> Enrollment:
        return Enrollment(kiosk_id="k1", product_id=product_id, name=f"Name {product_id}", frames=[frame], **typed)

    kiosk.sync.send_enrollment(enrollment("jam", price=2.5, description="Strawberry, 350 g", category="Spreads"))
    kiosk.sync.send_enrollment(enrollment("tea"))  # nothing typed: the fields are left out of the JSON
    deadline = time.monotonic() + LIMIT
    while len(inbox.entries()) < 2 and time.monotonic() < deadline:
        hq.serve()
        time.sleep(0.05)
    jam, tea = inbox.entries()
    assert (jam.product_id, jam.price, jam.description, jam.category) == ("jam", 2.5, "Strawberry, 350 g", "Spreads")
    assert (tea.product_id, tea.price, tea.description) == ("tea", None, "")
    assert set(json.loads(enrollment("tea").to_json())) == {
        "kiosk_id",
        "product_id",
        "name",
        "category",
        "frames",
        "created",
    }

    # An older kiosk's message (no price/description keys) is still accepted; hostile values are refused whole.
    tap = Recorder(memory_broker, client_id="store-k1")
    older = enrollment("old").model_dump(exclude={"price", "description"})
    tap.inject(hq.topics.enroll("k1"), json.dumps(older).encode())
    assert hq.serve() == 1 and inbox.entries()[-1].product_id == "old"
    for bad in (
        {"price": -1},
        {"price": 1e9},
        {"price": "NaN"},
        {"description": "x" * 2001},
        {"description": "a\x1b[2J"},
    ):
        tap.inject(hq.topics.enroll("k1"), json.dumps({**older, **bad}).encode())
        with pytest.raises(SyncError, match="malformed Enrollment"):
            hq.serve()
    assert len(inbox.entries()) == 3
    with pytest.raises(ValidationError):
        enrollment("nan", price=math.inf)  # the kiosk cannot build one either

    # approve: what the clerk typed by default, what the approver types instead when given.
    for price, description in ((-0.01, None), (math.nan, None), (None, "x" * 2001), (None, "tab\there")):
        with pytest.raises(InputError, match=f"enrollment #{jam.id}: (price|description)"):
            inbox.approve(jam.id, hq.catalog, price=price, description=description)  # the approver's are bounded too
    inbox.approve(jam.id, hq.catalog)
    inbox.approve(tea.id, hq.catalog, price=1.2, description="Green tea, 20 bags")
    assert {k: hq.catalog.product("jam")[k] for k in ("price", "description", "category")} == {
        "price": 2.5,
        "description": "Strawberry, 350 g",
        "category": "Spreads",
    }
    assert (hq.catalog.product("tea")["price"], hq.catalog.product("tea")["description"]) == (1.2, "Green tea, 20 bags")
    # A product the master already has keeps its own values; only the approver's change it.
    hq.catalog.update_product("p000001", price=9.0, description="HQ's")
    again = inbox.add(enrollment("p000001", price=0.5, description="typed at the store"))
    inbox.approve(again, hq.catalog)
    assert (hq.catalog.product("p000001")["price"], hq.catalog.product("p000001")["description"]) == (9.0, "HQ's")
    inbox.close()


# -- withdrawals: a teach undone at the kiosk is taken back from HQ's inbox ------------------------


@pytest.fixture
def inbox(tmp_path: Path, hq: MemoryHq) -> Iterator[EnrollmentInbox]:
    """HQ with `hq serve --inbox`'s handlers for enrollments and their withdrawals."""
    box = EnrollmentInbox(tmp_path / "inbox.db")
    hq.server = HqServer(on_enrollment=box.add, on_withdrawal=box.withdraw)
    hq.bus.subscribe(hq.topics.all_of("enroll"))
    hq.bus.subscribe(hq.topics.all_of("withdraw"))
    yield box
    box.close()


def taught_enrollment(hq: MemoryHq, kiosk_id: str, product_id: str, created: float) -> Enrollment:
    frame = EnrolledFrame(embedding=[1.0] + [0.0] * (hq.dim - 1), fingerprint=hq.fingerprint)
    return Enrollment(
        kiosk_id=kiosk_id, product_id=product_id, name=f"Name {product_id}", frames=[frame], created=created
    )


def serve_until(hq: MemoryHq, done: Callable[[], bool]) -> None:
    """Let HQ handle what arrived until `done()` holds (the kiosk's worker thread sends on its own tick)."""
    deadline = time.monotonic() + LIMIT
    while not done():
        assert time.monotonic() < deadline, "HQ never got there"
        hq.serve()
        time.sleep(0.02)


def statuses(inbox: EnrollmentInbox) -> list[tuple[str, str, str]]:
    return [(e.kiosk_id, e.product_id, e.status) for e in inbox.entries()]


def test_a_withdrawal_takes_back_only_that_kiosks_enrollment_of_that_teach(
    hq: MemoryHq,
    memory_broker: MemoryBroker,
    stores: Callable[..., Store],
    inbox: EnrollmentInbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kiosk = stores("k1")
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    first, again = taught_enrollment(hq, "k1", "jam", 1000.25), taught_enrollment(hq, "k1", "jam", 2000.5)
    kiosk.sync.send_enrollment(first)  # taught, then more views of it taught (add_to_existing)
    kiosk.sync.send_enrollment(again)
    # Another kiosk taught the same id at the same instant: its entry is never k1's to withdraw.
    Recorder(memory_broker, client_id="k2").inject(
        hq.topics.enroll("k2"), taught_enrollment(hq, "k2", "jam", 2000.5).to_json()
    )
    serve_until(hq, lambda: len(inbox.entries()) == 3)

    # The second teach is undone: only its enrollment goes.
    assert kiosk.sync.withdraw_enrollment("jam", again.created) == "withdrawal queued"
    serve_until(hq, lambda: inbox.withdrawals() != [])
    assert sorted(statuses(inbox)) == [("k1", "jam", "pending"), ("k1", "jam", "withdrawn"), ("k2", "jam", "pending")]
    [withdrawn] = inbox.entries("withdrawn")
    assert inbox.enrollment(withdrawn.id).created == again.created and "undone" in withdrawn.note
    assert [w.outcome for w in inbox.withdrawals()] == [f"withdrew #{withdrawn.id}"]
    for decide in (lambda: inbox.approve(withdrawn.id, hq.catalog), lambda: inbox.reject(withdrawn.id)):
        with pytest.raises(InputError, match=f"#{withdrawn.id} was withdrawn by its kiosk"):
            decide()
    assert "jam" not in {p["id"] for p in hq.catalog.products()}

    # The first was approved before the kiosk took it back: HQ's catalog keeps it, and says so.
    [kept] = [e for e in inbox.entries("pending") if e.kiosk_id == "k1"]
    version = inbox.approve(kept.id, hq.catalog)
    assert kiosk.sync.withdraw_enrollment("jam", first.created) == "withdrawal queued"
    with caplog.at_level(logging.INFO, logger="shelfsight.catalog.hq.inbox"):
        serve_until(hq, lambda: len(inbox.withdrawals()) == 2)
    assert "already approved" in caplog.text and "the master catalog keeps it" in caplog.text
    assert inbox.entries()[kept.id - 1].status == "approved" and hq.catalog.version == version
    assert hq.catalog.product("jam")["name"] == "Name jam"
    assert sorted(statuses(inbox)) == [("k1", "jam", "approved"), ("k1", "jam", "withdrawn"), ("k2", "jam", "pending")]


def test_a_withdrawal_handled_before_its_enrollment_makes_it_arrive_withdrawn(
    hq: MemoryHq, memory_broker: MemoryBroker, inbox: EnrollmentInbox
) -> None:
    """Several `hq serve` workers share the topics, so a withdrawal can be handled before its enrollment."""
    store = Recorder(memory_broker, client_id="k1")
    undone, kept = (
        taught_enrollment(hq, "k1", "tea", 1700000000.123456),
        taught_enrollment(hq, "k1", "tea", 1700000099.5),
    )
    withdrawal = Withdrawal(kiosk_id="k1", product_id="tea", enrollment_created=undone.created, created=1700000001.0)
    store.inject(hq.topics.withdraw("k1"), withdrawal.to_json())
    assert hq.serve() == 1 and inbox.entries() == []
    assert [w.outcome for w in inbox.withdrawals()] == ["no such enrollment yet: it is stored withdrawn if it arrives"]
    store.inject(hq.topics.enroll("k1"), undone.to_json())
    store.inject(hq.topics.enroll("k1"), kept.to_json())  # taught again later: a new teach, not withdrawn
    store.inject(hq.topics.withdraw("k1"), withdrawal.to_json())  # the broker delivered it twice
    assert hq.serve() == 3
    assert [(e.id, e.status) for e in inbox.entries()] == [(1, "withdrawn"), (2, "pending")]
    assert [w.outcome for w in inbox.withdrawals()] == ["withdrew #1, which arrived after it", "#1 already withdrawn"]


def test_an_enrollment_the_broker_never_had_is_taken_out_of_the_outbox(
    hq: MemoryHq, stores: Callable[..., Store], inbox: EnrollmentInbox
) -> None:
    kiosk = stores("k1")
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    kiosk.bus.drop()  # the broker is away
    undone = taught_enrollment(hq, "k1", "jam", 1000.0)
    kiosk.sync.send_enrollment(undone)
    assert kiosk.sync.withdraw_enrollment("jam", undone.created) == "removed from outbox"
    kiosk.bus.connect()
    marker = taught_enrollment(hq, "k1", "tea", 1001.0)
    kiosk.sync.send_enrollment(marker)  # queued behind where the undone one was
    serve_until(hq, lambda: inbox.entries() != [])
    hq.serve()
    assert statuses(inbox) == [("k1", "tea", "pending")] and inbox.withdrawals() == []


def test_an_enrollment_sent_without_an_acknowledgement_is_withdrawn_at_hq_too(
    hq: MemoryHq, stores: Callable[..., Store], inbox: EnrollmentInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A QoS 1 send that timed out may still arrive (paho keeps it in flight): the outbox copy is not enough."""
    kiosk = stores("k1")
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    publish = kiosk.bus.publish
    delivered: list[str] = []

    def acknowledgement_lost(topic: str, payload: bytes, **kwargs: Any) -> None:
        if "/enroll/" not in topic:
            return publish(topic, payload, **kwargs)
        if not delivered:
            delivered.append(topic)
            publish(topic, payload, **kwargs)  # it reaches the broker; its PUBACK does not come back
        raise SyncError(f"{topic}: the broker did not acknowledge the message within 5s")

    monkeypatch.setattr(kiosk.bus, "publish", acknowledgement_lost)
    undone = taught_enrollment(hq, "k1", "jam", 1000.0)
    kiosk.sync.send_enrollment(undone)
    serve_until(hq, lambda: inbox.entries() != [])
    assert kiosk.sync.withdraw_enrollment("jam", undone.created) == "withdrawal queued"
    serve_until(hq, lambda: inbox.withdrawals() != [])
    assert statuses(inbox) == [("k1", "jam", "withdrawn")]


def test_hostile_withdrawals_are_refused_and_change_nothing(
    hq: MemoryHq, memory_broker: MemoryBroker, inbox: EnrollmentInbox
) -> None:
    store, other = Recorder(memory_broker, client_id="k1"), Recorder(memory_broker, client_id="k2")
    taught = taught_enrollment(hq, "k1", "jam", 1000.5)
    store.inject(hq.topics.enroll("k1"), taught.to_json())
    assert hq.serve() == 1
    genuine = json.loads(Withdrawal(kiosk_id="k1", product_id="jam", enrollment_created=1000.5).to_json())
    hostile = [
        (hq.topics.withdraw("k2"), json.dumps(genuine).encode(), "payload claims kiosk 'k1', topic says 'k2'"),
        (hq.topics.withdraw("k1"), json.dumps({**genuine, "pad": "x" * 5000}).encode(), "over the 4096-byte limit"),
        (hq.topics.withdraw("k1"), b'{"kiosk_id": "k1", "product_id": "jam", ', "malformed Withdrawal"),
        (hq.topics.withdraw("k1"), json.dumps({**genuine, "all": True}).encode(), "malformed Withdrawal"),
        (hq.topics.withdraw("k1"), json.dumps({**genuine, "enrollment_created": "NaN"}).encode(), "malformed"),
        (hq.topics.withdraw("k1"), json.dumps({**genuine, "product_id": "../jam"}).encode(), "malformed"),
        (hq.topics.withdraw("k1"), json.dumps({**genuine, "kiosk_id": "k1/#"}).encode(), "malformed"),
    ]
    for topic, payload, why in hostile:
        (other if "/k2" in topic else store).inject(topic, payload)
        with pytest.raises(SyncError, match=why):
            hq.serve()
    # k2 naming its own id is a well-formed withdrawal, of k2's enrollments only: k1's entry is not among them.
    other.inject(hq.topics.withdraw("k2"), json.dumps({**genuine, "kiosk_id": "k2"}).encode())
    assert hq.serve() == 1
    assert statuses(inbox) == [("k1", "jam", "pending")]
    assert [(w.kiosk_id, w.outcome) for w in inbox.withdrawals()] == [
        ("k2", "no such enrollment yet: it is stored withdrawn if it arrives")
    ]


def test_what_the_worker_had_not_taken_when_sync_stops_stays_in_the_outbox(
    hq: MemoryHq, stores: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    kiosk = stores("k1")
    kiosk.sync.start()
    kiosk.reach(Phase.CURRENT, hq.catalog.version)
    busy, release = threading.Event(), threading.Event()

    def stuck(payload: bytes) -> None:  # the worker is busy with something slow (an install, say)
        busy.set()
        release.wait(LIMIT)

    monkeypatch.setattr(kiosk.sync, "_publish_event", stuck)
    kiosk.sync.publish_event(b"{}")
    assert busy.wait(LIMIT)
    kiosk.sync.send_enrollment(taught_enrollment(hq, "k1", "jam", 1000.0))
    answers: list[str] = []
    asking = threading.Thread(target=lambda: answers.append(kiosk.sync.withdraw_enrollment("tea", 999.0)))
    asking.start()
    deadline = time.monotonic() + LIMIT
    while kiosk.sync._queue.qsize() < 2:  # noqa: SLF001 - both wait behind the slow item
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stopping = threading.Thread(target=kiosk.sync.stop)
    stopping.start()
    assert kiosk.sync._stop.wait(LIMIT)  # noqa: SLF001
    release.set()
    stopping.join(LIMIT)
    asking.join(LIMIT)
    assert answers == ["withdrawal queued"]
    state = SyncState(kiosk.sync.data_dir / "sync_state.db")
    try:
        assert [topic for _, topic, _ in state.outbox()] == [hq.topics.enroll("k1"), hq.topics.withdraw("k1")]
    finally:
        state.close()
