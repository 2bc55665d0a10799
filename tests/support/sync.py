"""Test data and roles for sync tests (imported by conftest and test modules)."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.hq.publisher import HqPublisher, HqServer
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.envelope import Signer
from shelfsight.catalog.sync.topics import Topics
from shelfsight.catalog.sync.transport.base import Message
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.catalog.sync.transport.memory import MemoryBroker
from shelfsight.edge_app.core.spec import ModelSpec, write_spec
from shelfsight.edge_app.kiosk.updates.config import SyncConfig
from shelfsight.edge_app.kiosk.updates.releases import current_release, seed_release
from shelfsight.edge_app.kiosk.updates.worker import KioskSync
from tests.support.broker import Broker

DIM = 16
FLEET = "test"
WAIT = 30.0  # generous upper bound for convergence on a loaded 2-core machine; not a speed assertion


def make_model(folder: Path, seed: int = 0, dim: int = DIM) -> Path:
    """A model file with a valid sidecar. Sync only moves and hashes it, so its bytes need not be TFLite."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.tflite"
    path.write_bytes(b"TFL3" + np.random.default_rng(seed).bytes(3000))
    write_spec(
        path, ModelSpec(fingerprint=hashlib.sha256(path.read_bytes()).hexdigest(), input_size=64, embedding_dim=dim)
    )
    return path


def fingerprint_of(model: Path) -> str:
    return hashlib.sha256(model.read_bytes()).hexdigest()


def add_products(
    catalog: Catalog, fingerprint: str, ids: range | list[int], *, seed: int = 0, prefix: str = "p", dim: int = DIM
) -> None:
    """Add (or update) one product with one reference embedding per id, in one transaction."""
    rng = np.random.default_rng(seed)
    with catalog.batch():
        for i in ids:
            pid = f"{prefix}{i:06d}"
            if catalog._product_row(pid) is None:  # noqa: SLF001 - test data builder
                catalog.add_product(pid, f"Product {i}", category="food" if i % 2 else "drink")
            else:
                catalog.update_product(pid, name=f"Product {i} v{seed}")
            catalog.add_reference_vector(
                pid,
                rng.normal(size=dim).astype(np.float32),
                fingerprint=fingerprint,
                phash="",
                source="test",
                image_jpeg=None,
                keypoints=None,
            )


class Hq:
    """HQ for a test: a master catalog, a model, a connected publisher."""

    def __init__(
        self,
        root: Path,
        broker: Broker,
        signer: Signer,
        *,
        chunk_bytes: int = 16 * 1024,
        fleet: str = FLEET,
        dim: int = DIM,
    ):
        self.root = root
        self.dim = dim
        root.mkdir(parents=True, exist_ok=True)
        self.model = make_model(root / "model", dim=dim)
        self.fingerprint = fingerprint_of(self.model)
        self.master = root / "master.db"
        self.catalog = Catalog(self.master)
        self.topics = Topics("shelfsight", fleet)
        self.config = BrokerConfig(host="127.0.0.1", port=broker.port)
        self.received: list[Message] = []
        self.bus = open_bus(self.config, client_id=f"hq-{fleet}", on_message=self.received.append, persistent=False)
        self.bus.connect()
        self.publisher = HqPublisher(
            self.master, signer, self.bus, self.topics, model=self.model, chunk_bytes=chunk_bytes
        )

    def add(self, ids: range | list[int], seed: int = 0) -> int:
        add_products(self.catalog, self.fingerprint, ids, seed=seed, dim=self.dim)
        return self.catalog.version

    def close(self) -> None:
        self.bus.close()
        self.catalog.close()


def kiosk_config(broker: Broker, public_key: Path, kiosk_id: str, **overrides: Any) -> SyncConfig:
    values: dict[str, Any] = dict(
        host="127.0.0.1", port=broker.port, fleet=FLEET, kiosk_id=kiosk_id, public_key=public_key, hold_s=1.0
    )
    values.update(overrides)  # may replace the public key too
    return SyncConfig(**values)


def seed_kiosk(data_dir: Path, hq: Hq) -> None:
    """Install HQ's model and a copy of the master at its current version, as a kiosk setup would."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    snapshot = data_dir.parent / f"{data_dir.name}-seed.db"
    with Catalog(snapshot) as copy:
        copy.replace_with_snapshot(hq.catalog.export_snapshot())
    seed_release(data_dir, hq.model, snapshot)


class Tap:
    """A plain MQTT client that records what it sees and can inject raw bytes (an observer or an attacker)."""

    def __init__(self, broker: Broker, topic_filter: str | None = None, *, client_id: str = "tap", **auth: Any):
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.bus = open_bus(
            BrokerConfig(host="127.0.0.1", port=broker.port, **auth),
            client_id=client_id,
            on_message=self._record,
            persistent=False,
        )
        if topic_filter is not None:
            self.bus.subscribe(topic_filter)
        self.bus.connect()

    def _record(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()
        self.bus.ack(message)

    def wait(self, predicate: Callable[[list[Message]], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages if m.topic == topic and m.payload]

    def inject(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.bus.publish(topic, payload, retain=retain)

    def close(self) -> None:
        self.bus.close()


class RunningServer:
    """`hq serve` in a thread, on its own broker connection."""

    def __init__(self, hq: Hq, signer: Signer, inbox: EnrollmentInbox | None = None, *, poll_s: float = 0.3):
        self.server = HqServer(on_enrollment=inbox.add if inbox is not None else None, poll_s=poll_s)
        self.bus = open_bus(
            hq.config, client_id="hq-server", on_message=self.server.on_message, on_connect=self.server.on_connect
        )
        self.publisher = HqPublisher(
            hq.master,
            signer,
            self.bus,
            hq.topics,
            model=hq.model,
            chunk_bytes=hq.publisher.chunk_bytes,
            max_message_bytes=hq.publisher.max_message_bytes,
        )
        self.bus.connect()
        self.thread = threading.Thread(target=self.server.run, args=(self.publisher, self.bus), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop_event.set()
        self.thread.join(30)
        self.bus.close()


class Searcher:
    """The kiosk's own search loop: a separate Catalog on the current release, reloaded on `on_applied`."""

    def __init__(self, data_dir: Path) -> None:
        _, catalog_path = current_release(data_dir)
        self.catalog = Catalog(catalog_path, create=False)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._query = np.random.default_rng(7).normal(size=self.catalog.embedding_dim or DIM).astype(np.float32)
        self.catalog.index()  # a kiosk has its index before it serves; don't count the first build
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def on_applied(self, version: int) -> None:
        self.catalog.reload()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                hits = self.catalog.search(self._query, k=3)
                if not hits:
                    self.failures.append("no hits")
            except Exception as exc:  # recorded, then asserted on by the test
                self.failures.append(repr(exc))
            self.latencies.append(time.perf_counter() - start)
            time.sleep(0.002)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(10)
        self.catalog.close()
        lat = sorted(self.latencies) or [0.0]
        return {
            "searches": len(self.latencies),
            "failures": len(self.failures),
            "availability": 1 - len(self.failures) / max(1, len(self.latencies)),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        }


def _kiosk_main(config_json: str, data_dir: str) -> None:
    """Child process body: a kiosk's sync, running until killed."""
    logging.disable(logging.CRITICAL)
    sync = KioskSync(SyncConfig.model_validate_json(config_json), data_dir)
    sync.start()
    while True:
        time.sleep(1)


def kiosk_version(data_dir: Path) -> int:
    _, path = current_release(data_dir)
    with Catalog(path, create=False) as catalog:
        return catalog.version


def check_kiosk_catalog(data_dir: Path, published: dict[int, list[dict[str, Any]]]) -> int:
    """Assert the kiosk's catalog is exactly one published version, intact and searchable; return it."""
    _, path = current_release(data_dir)
    with Catalog(path, create=False) as catalog:
        assert catalog.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        version = catalog.version
        assert version in published, f"v{version} was never published"
        records = catalog.export_snapshot()["records"]
        if records != published[version]:
            ours = {(r["op"], r["product_id"], r["reference_id"]): r for r in records}
            theirs = {(r["op"], r["product_id"], r["reference_id"]): r for r in published[version]}
            only_ours, only_theirs = sorted(set(ours) - set(theirs))[:3], sorted(set(theirs) - set(ours))[:3]
            changed = [k for k in set(ours) & set(theirs) if ours[k] != theirs[k]][:2]
            detail = [(ours[k], theirs[k]) for k in changed]
            raise AssertionError(
                f"v{version} differs from HQ's v{version}: {len(records)} vs {len(published[version])} records; "
                f"only kiosk {only_ours}, only HQ {only_theirs}, changed {str(detail)[:600]}"
            )
        assert catalog.search(np.ones(catalog.embedding_dim or DIM, np.float32), k=1)
    return version


def kill_trials(
    hq: Hq, config: SyncConfig, data_dir: Path, trials: int, *, seed: int = 0, products_per_step: int = 150
) -> dict[str, Any]:
    """Publish a version, run a kiosk process, SIGKILL it at a random moment, check its catalog; repeat."""
    rng = np.random.default_rng(seed)
    fork = multiprocessing.get_context("fork")
    published = {hq.catalog.version: hq.catalog.export_snapshot()["records"]}
    outcomes = {"old": 0, "new": 0, "other_published": 0}
    windows = {False: 0.0, True: 0.0}
    next_id = 10_000
    killed = step = 0
    while killed < trials:
        before = check_kiosk_catalog(data_dir, published)
        big = step % 4 == 3  # every 4th step goes over the message limit: snapshot path
        count = products_per_step * (4 if big else 1)
        hq.add(range(next_id, next_id + count), seed=step)
        next_id += count // 2  # half new products, half updates of the previous step's
        hq.publisher.publish()
        published[hq.catalog.version] = hq.catalog.export_snapshot()["records"]
        child = fork.Process(target=_kiosk_main, args=(config.model_dump_json(), str(data_dir)), daemon=True)
        started = time.monotonic()
        child.start()
        # Calibration runs (one small, one big step in every 8) are not killed early: they measure how long a
        # full apply takes now (it grows with the catalog), and later kills land uniformly within that time.
        calibrating = step % 8 in (0, 3)
        if calibrating:
            deadline = started + WAIT
            # Only the version while the child writes: a full check would read across its commits.
            while kiosk_version(data_dir) != hq.catalog.version and time.monotonic() < deadline:
                time.sleep(0.02)
            windows[big] = time.monotonic() - started
        else:
            time.sleep(float(rng.uniform(0, windows[big])))
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)
        after = check_kiosk_catalog(data_dir, published)
        step += 1
        if not calibrating:
            killed += 1
            key = "new" if after == hq.catalog.version else "old" if after == before else "other_published"
            outcomes[key] += 1
    return {
        "trials": trials,
        "window_s": {"delta": round(windows[False], 3), "snapshot": round(windows[True], 3)},
        "inconsistent": 0,
        **outcomes,
    }


def run_fleet(
    hq: Hq, broker: Broker, public_key: Path, root: Path, *, kiosks: int, changed: int, timeout: float
) -> dict[str, Any]:
    """Start `kiosks` kiosks at HQ's current version, publish `changed` changed products, time convergence."""
    fleet = []
    for i in range(kiosks):
        data_dir = root / f"k{i:04d}"
        seed_kiosk(data_dir, hq)
        fleet.append(KioskSync(kiosk_config(broker, public_key, f"sim{i:04d}", hold_s=2.0), data_dir))
    try:
        for kiosk in fleet:
            kiosk.start()
        for kiosk in fleet:
            assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, timeout)
        hq.add(range(changed), seed=99)
        target = hq.catalog.version
        start = time.monotonic()
        hq.publisher.publish()
        converged = sum(
            kiosk.wait_for(lambda k: k.version == target, max(0.1, start + timeout - time.monotonic()))
            for kiosk in fleet
        )
        elapsed = time.monotonic() - start
        return {
            "kiosks": kiosks,
            "changed_products": changed,
            "converged": converged,
            "seconds": round(elapsed, 2),
            "by_snapshot": sum(k.counters["snapshots"] for k in fleet),
        }
    finally:
        for kiosk in fleet:
            kiosk.stop()


class MemoryHq(Hq):
    """HQ on an in-memory broker (`transport.memory`) for the fast rule tests: master, model, publisher.

    Kiosks' resync requests are collected, and answered only when the test calls `serve()`, by
    `hq serve`'s own handler, so a test decides exactly when HQ reacts.
    """

    def __init__(
        self, root: Path, broker: MemoryBroker, signer: Signer, *, chunk_bytes: int = 16 * 1024, fleet: str = FLEET
    ) -> None:
        # Not Hq.__init__: that one connects paho to a Mosquitto; everything else is the same master setup.
        self.root, self.dim, self.broker = root, DIM, broker
        root.mkdir(parents=True, exist_ok=True)
        self.model = make_model(root / "model")
        self.fingerprint = fingerprint_of(self.model)
        self.master = root / "master.db"
        self.catalog = Catalog(self.master)
        self.topics = Topics("shelfsight", fleet)
        self.config = BrokerConfig()
        self.received = []
        self._served = 0
        self.server = HqServer()
        self.bus = broker.open_bus(self.config, client_id=f"hq-{fleet}", on_message=self.received.append)
        self.bus.subscribe(self.topics.all_of("resync"))
        self.bus.connect()
        self.publisher = HqPublisher(
            self.master, signer, self.bus, self.topics, model=self.model, chunk_bytes=chunk_bytes
        )

    def resync_requests(self) -> list[dict[str, Any]]:
        """The resync requests received so far (whether answered or not), as JSON objects."""
        self.broker.drain()
        return [json.loads(m.payload) for m in self.received if m.topic.startswith(f"{self.topics.root}/resync/")]

    def serve(self) -> int:
        """Answer every request received since the last call, as `hq serve` does; returns how many."""
        self.broker.drain()
        pending = self.received[self._served :]
        self._served += len(pending)
        for message in pending:
            try:
                self.server._handle(self.publisher, message)  # noqa: SLF001 - hq serve's handler, without its loop
            finally:
                self.bus.ack(message)
        self.broker.drain()
        return len(pending)
