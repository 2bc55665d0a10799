"""Enrollment end to end, all real parts: a clerk teaches a kiosk, HQ approves, the product comes back as HQ's;
or the clerk undoes the teach, and HQ's inbox entry is withdrawn (or HQ never sees it).

Real Mosquitto, real SQLite catalogs, the real tiny TFLite model, `hq serve`'s
server loop and the `shelfsight hq enrollments/approve` commands.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.hq.publisher import HqPublisher, HqServer
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.digest import content_digest
from shelfsight.catalog.sync.envelope import Signer, Verifier
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import generate_sample_set
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.kiosk.updates.releases import current_release
from shelfsight.edge_app.kiosk.updates.worker import KioskSync
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.runtime.factory import open_embedder
from tests.support.broker import Broker
from tests.support.sync import WAIT, Hq, RunningServer, Tap

NEW_ID = "new-sku"
DESCRIPTION = "Strawberry jam, 350 g"


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll until `predicate()` holds; an upper bound for a loaded machine, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def real_hq(tmp_path: Path, broker: Broker, hq_keys: tuple[Signer, Verifier, Path], tiny_model: Path) -> Any:
    """HQ publishing the real tiny model and a master catalog of two rendered sample products."""
    embedder = open_embedder(tiny_model, threads=1)
    samples = generate_sample_set(tmp_path / "samples", n_products=3, refs_per_product=2, queries_per_product=3)
    products = sorted(p.name for p in samples.catalog_dir.iterdir() if p.is_dir())
    hq = Hq(tmp_path / "hq", broker, hq_keys[0], dim=embedder.dim)
    hq.model, hq.fingerprint = tiny_model, embedder.fingerprint
    hq.publisher.model = tiny_model
    with hq.catalog.batch():
        for product_id in products[:2]:
            hq.catalog.add_product(product_id, f"Product {product_id}")
            for path in iter_image_files(samples.catalog_dir / product_id):
                hq.catalog.add_reference(product_id, load_rgb(path), embedder, path.name)
    hq.publisher.publish()
    unknown = [load_rgb(p) for p in iter_image_files(samples.queries_dir / products[2])]
    yield hq, embedder, unknown
    hq.close()
    embedder.close()


def test_taught_product_goes_to_hq_is_approved_and_comes_back_as_hqs(
    real_hq: Any, store: Any, broker: Broker, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq, embedder, frames = real_hq
    kiosk, sync = store
    catalog_path = current_release(sync.data_dir)[1]
    inbox = EnrollmentInbox(tmp_path / "inbox.db")
    server = RunningServer(hq, hq_keys[0], inbox, poll_s=0.2)
    events = Tap(broker, sync.topics.events("k1"), client_id="pos-screen")  # the store's own systems listening
    try:
        assert kiosk.health()["sync"]["behind"] == 0 and kiosk.problems() == []
        assert kiosk.search(frames[0]).decision == "unknown"
        version = sync.version
        taught = kiosk.teach(NEW_ID, "Local Jam", frames=frames, price=2.5, description=DESCRIPTION)
        assert taught.new_product and taught.sent_to_hq and len(taught.references) == len(frames)
        assert kiosk.search(frames[0]).product_id == NEW_ID  # usable at once, before HQ has seen it
        assert kiosk.recognizer.catalog.product(NEW_ID)["local"] is True and sync.version == version
        for i, rgb in enumerate(frames * 2):  # the camera sees it: one announcement, published for the store
            kiosk.process(Frame(rgb, time.monotonic(), i))
        topic = sync.topics.events("k1")
        assert events.wait(
            lambda _: any(b'"product_id":"new-sku"' in p.replace(b" ", b"") for p in events.payloads(topic))
        )
        announced = [json.loads(p) for p in events.payloads(topic)]
        assert [e["decision"] for e in announced][-1] == "product" and announced[-1]["product"]["name"] == "Local Jam"
        assert len(announced) <= 3  # per change of announcement, not per frame

        assert eventually(lambda: bool(inbox.entries())), "the enrollment never reached HQ's inbox"
        [entry] = inbox.entries()
        assert (entry.kiosk_id, entry.product_id, entry.frames) == ("k1", NEW_ID, len(frames))
        assert (entry.price, entry.description) == (2.5, DESCRIPTION)  # what the clerk typed reached HQ
        cli = build_cli()
        listed = CliRunner().invoke(cli, ["hq", "enrollments", "--inbox", str(inbox.path)])
        assert listed.exit_code == 0 and NEW_ID in listed.output, listed.output
        assert "2.50" in listed.output and DESCRIPTION in listed.output, listed.output
        approved = CliRunner().invoke(
            cli, ["hq", "approve", str(entry.id), "--inbox", str(inbox.path), "--db", str(hq.master)]
        )
        assert approved.exit_code == 0, approved.output

        hq.catalog.reload()
        assert eventually(lambda: sync.version == hq.catalog.version), sync.last_error
        master = hq.catalog.product(NEW_ID)
        assert (master["price"], master["description"]) == (2.5, DESCRIPTION)  # approved without retyping
        with Catalog(catalog_path, create=False) as store:
            product = store.product(NEW_ID)
            assert product["local"] is False and product["version"] == master["version"]
            assert product["name"] == "Local Jam" and product["references"] == master["references"]
            assert (product["price"], product["description"]) == (2.5, DESCRIPTION)
            assert store.stats()["local_products"] == 0 and store.stats()["local_references"] == 0
            assert content_digest(store) == content_digest(hq.catalog)
        # `hq approve` computed ORB keypoints from the enrolled frames, so HQ's copy is verified and announced
        # even with verification required (accept_similarity above 1).
        answer = kiosk.search(frames[0])
        assert answer.candidates[0].product_id == NEW_ID
        assert answer.decision == "product" and answer.product["product_id"] == NEW_ID
        assert sync.counters["snapshots"] == 0  # the approved product arrived as a plain delta
        broker.stop()  # the store's broker goes away: after the grace period sync is reported down
        assert eventually(lambda: sync.health_problem(grace_s=0.0) is not None)
        assert "unreachable" in str(sync.health_problem(grace_s=0.0))
        assert sync.health_problem(grace_s=3600.0) is None  # within the grace: a blip is not an outage
    finally:
        events.close()
        server.stop()
        inbox.close()


# -- an undone teach is withdrawn from HQ's inbox ---------------------------------------------


class InboxServer:
    """`hq serve --inbox` in a thread: enrollments into the inbox and withdrawals applied to it, as the CLI wires it."""

    def __init__(self, hq: Hq, signer: Signer, inbox: EnrollmentInbox) -> None:
        self.server = HqServer(on_enrollment=inbox.add, on_withdrawal=inbox.withdraw, poll_s=0.2)
        self.bus = open_bus(
            hq.config, client_id="hq-server", on_message=self.server.on_message, on_connect=self.server.on_connect
        )
        publisher = HqPublisher(
            hq.master, signer, self.bus, hq.topics, model=hq.model, chunk_bytes=hq.publisher.chunk_bytes
        )
        self.bus.connect()
        self.thread = threading.Thread(target=self.server.run, args=(publisher, self.bus), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop_event.set()
        self.thread.join(30)
        self.bus.close()


@pytest.fixture
def store(real_hq: Any, kiosk_factory: Callable[..., KioskSync]) -> Any:
    """A real kiosk on the tiny model, seeded from HQ and connected to sync."""
    hq = real_hq[0]
    kiosks: list[Kiosk] = []
    sync = kiosk_factory("k1", hq=hq, hooks={"on_applied": lambda version: kiosks[0].reload_catalog(version)})
    model_path, catalog_path = current_release(sync.data_dir)
    # Verification decides (the tiny model alone finds the three sample products too alike).
    config = RecognitionConfig(shortlist=3, unknown_threshold=0.5, accept_similarity=1.01)
    kiosk = Kiosk(Recognizer(open_embedder(model_path, threads=1), Catalog(catalog_path, create=False), config))
    kiosks.append(kiosk)
    kiosk.connect_sync(sync)
    yield kiosk, sync
    kiosk.recognizer.catalog.close()
    kiosk.recognizer.embedder.close()


def test_an_undone_teach_is_withdrawn_from_hqs_inbox_and_hq_approve_refuses_it(
    real_hq: Any,
    store: Any,
    broker: Broker,
    hq_keys: tuple[Signer, Verifier, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hq, _, frames = real_hq
    kiosk, sync = store
    inbox = EnrollmentInbox(tmp_path / "inbox.db")
    server = InboxServer(hq, hq_keys[0], inbox)
    attacker = Tap(broker, client_id="k2")
    cli = build_cli()
    try:
        assert kiosk.teach(NEW_ID, "Taught by mistake", frames=frames, price=2.5).sent_to_hq
        assert eventually(lambda: bool(inbox.entries())), "the enrollment never reached HQ's inbox"
        [entry] = inbox.entries()
        genuine = {"kiosk_id": "k1", "product_id": NEW_ID, "enrollment_created": inbox.enrollment(entry.id).created}

        # Hostile withdrawals through the real broker and server loop: refused, logged, nothing changed.
        with caplog.at_level(logging.WARNING, logger="shelfsight.catalog.hq.publisher"):
            attacker.inject(sync.topics.withdraw("k2"), json.dumps(genuine).encode())  # k2 withdrawing k1's
            attacker.inject(sync.topics.withdraw("k1"), json.dumps({**genuine, "pad": "x" * 5000}).encode())
            attacker.inject(sync.topics.withdraw("k1"), b'{"kiosk_id": "k1", "product_id": ')
            assert eventually(lambda: caplog.text.count("hq: ") >= 3), caplog.text
        assert "payload claims kiosk 'k1', topic says 'k2'" in caplog.text
        assert "over the 4096-byte limit" in caplog.text and "malformed Withdrawal" in caplog.text
        assert [e.status for e in inbox.entries()] == ["pending"] and inbox.withdrawals() == []

        # The clerk undoes the teach: gone at the store at once, withdrawn at HQ once the message is there.
        undone = kiosk.undo_teach(NEW_ID)
        assert undone["removed_product"] and undone["hq"] == "withdrawal queued"
        assert kiosk.search(frames[0]).decision == "unknown"
        assert eventually(lambda: inbox.entries()[0].status == "withdrawn"), inbox.withdrawals()
        assert "undone" in inbox.entries()[0].note
        assert inbox.enrollment(entry.id).frames[0].image_jpeg  # a state, not a deletion: the photos stay

        refused = CliRunner().invoke(
            cli, ["hq", "approve", str(entry.id), "--inbox", str(inbox.path), "--db", str(hq.master)]
        )
        assert refused.exit_code == 1 and f"enrollment #{entry.id} was withdrawn by its kiosk" in refused.output
        hq.catalog.reload()
        assert NEW_ID not in {p["id"] for p in hq.catalog.products()}
        listed = CliRunner().invoke(cli, ["hq", "enrollments", "--inbox", str(inbox.path)])
        assert listed.exit_code == 0 and NEW_ID not in listed.output  # nothing waits for anyone
        everything = CliRunner().invoke(cli, ["hq", "enrollments", "--inbox", str(inbox.path), "--all"])
        assert NEW_ID in everything.output and "withdrawn" in everything.output, everything.output
    finally:
        attacker.close()
        server.stop()
        inbox.close()


def test_a_teach_undone_while_the_broker_is_away_is_taken_out_of_the_outbox_and_never_reaches_hq(
    real_hq: Any, store: Any, broker: Broker, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq, _, frames = real_hq
    kiosk, sync = store
    inbox = EnrollmentInbox(tmp_path / "inbox.db")
    server = InboxServer(hq, hq_keys[0], inbox)
    try:
        broker.stop()
        assert eventually(lambda: sync.health_problem(grace_s=0.0) is not None)
        assert kiosk.teach(NEW_ID, "Taught by mistake", frames=frames).sent_to_hq  # waits in the outbox
        assert kiosk.undo_teach(NEW_ID)["hq"] == "removed from outbox"
        broker.start()
        assert eventually(lambda: sync.health_problem(grace_s=0.0) is None), sync.last_error
        # The next teach goes out behind where the undone one was: once it is at HQ, the outbox is flushed.
        assert kiosk.teach("jam-2", "Local Jam", frames=frames).sent_to_hq
        assert eventually(lambda: bool(inbox.entries())), "the next enrollment never reached HQ's inbox"
        assert [(e.product_id, e.status) for e in inbox.entries()] == [("jam-2", "pending")]
        assert inbox.withdrawals() == []
    finally:
        server.stop()
        inbox.close()
