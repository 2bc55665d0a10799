"""Undoing a teach at the kiosk: exactly what the teach stored goes, nothing else, and never someone else's change."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.digest import content_digest
from shelfsight.catalog.sync.messages import Enrollment
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import NothingToUndo, SyncError
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from tests.support.teaching import show, views_of

TAUGHT = "taught-here"


@pytest.fixture()
def kiosk(store_catalog: Catalog, embedder: Embedder, full_config: RecognitionConfig) -> Kiosk:
    return Kiosk(Recognizer(embedder, store_catalog, full_config))


def test_undoing_a_new_product_removes_it_and_it_is_no_longer_recognised(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str
) -> None:
    frames = views_of(sample_set, unknown_id)
    before = content_digest(store_catalog), store_catalog.products()
    taught = kiosk.teach(TAUGHT, "Taught by mistake", frames=frames, price=1.5)
    assert show(kiosk, frames) == [TAUGHT] * len(frames)
    assert set(taught.reference_ids) == set(store_catalog.product(TAUGHT)["references"])

    undone = kiosk.undo_teach(TAUGHT)
    assert undone == {
        "product_id": TAUGHT,
        "removed_product": True,
        "references_removed": len(frames),
        "hq": "not sent",
    }
    assert (content_digest(store_catalog), store_catalog.products()) == before  # as it was, thumbnail included
    assert store_catalog.stats()["local_references"] == 0
    assert show(kiosk, frames) == [None] * len(frames)  # the index was rebuilt at once
    with pytest.raises(NothingToUndo, match=f"nothing to undo for {TAUGHT}: .*already undone"):
        kiosk.undo_teach(TAUGHT)


def test_undoing_added_views_keeps_the_product_and_its_other_views(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet
) -> None:
    known = store_catalog.products()[0]
    version, digest = content_digest(store_catalog)
    taught = kiosk.teach(known["id"], "ignored", frames=views_of(sample_set, known["id"])[:2], add_to_existing=True)
    assert len(taught.reference_ids) == 2
    undone = kiosk.undo_teach(known["id"])
    assert undone == {"product_id": known["id"], "removed_product": False, "references_removed": 2, "hq": "not sent"}
    assert store_catalog.product(known["id"]) == known
    assert content_digest(store_catalog) == (version, digest) and store_catalog.stats()["local_references"] == 0


def test_undo_takes_back_the_latest_teach_first(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str
) -> None:
    frames = views_of(sample_set, unknown_id)
    first = kiosk.teach(TAUGHT, "New", frames=frames[:1])
    more = kiosk.teach(TAUGHT, "ignored", frames=frames[1:], add_to_existing=True)
    assert set(first.reference_ids).isdisjoint(more.reference_ids)

    assert kiosk.undo_teach(TAUGHT) == {
        "product_id": TAUGHT,
        "removed_product": False,
        "references_removed": 2,
        "hq": "not sent",
    }
    assert store_catalog.product(TAUGHT)["references"] == list(first.reference_ids)
    assert kiosk.undo_teach(TAUGHT)["removed_product"] is True
    assert TAUGHT not in {p["id"] for p in store_catalog.products()}


def test_nothing_to_undo_for_a_product_never_taught_here(kiosk: Kiosk, store_catalog: Catalog) -> None:
    known = store_catalog.products()[0]
    with pytest.raises(NothingToUndo, match="not taught on this kiosk since it started"):
        kiosk.undo_teach(known["id"])
    assert store_catalog.product(known["id"]) == known


def test_a_view_removed_elsewhere_since_blocks_the_undo(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str, tmp_path: Path
) -> None:
    taught = kiosk.teach(TAUGHT, "New", frames=views_of(sample_set, unknown_id))
    with Catalog(tmp_path / "store.db") as cli:  # another process, as `shelfsight catalog remove --reference`
        cli.remove_reference(taught.reference_ids[0])
    with pytest.raises(NothingToUndo, match="its views changed since it was taught here"):
        kiosk.undo_teach(TAUGHT)
    assert store_catalog.product(TAUGHT)["references"] == list(taught.reference_ids[1:])  # their change is kept
    with pytest.raises(NothingToUndo, match="already undone"):  # and the stale record is gone
        kiosk.undo_teach(TAUGHT)


def test_a_product_hq_has_synced_since_is_not_undone(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str, tmp_path: Path
) -> None:
    taught = kiosk.teach(TAUGHT, "New", frames=views_of(sample_set, unknown_id))
    base = store_catalog.version
    with Catalog(tmp_path / "hq.db") as hq:  # HQ approved the enrollment: its delta carries the product
        hq.replace_with_snapshot(json.loads(json.dumps(store_catalog.export_snapshot())))
        hq.add_product(TAUGHT, "Approved at HQ", price=2.0)
        hq.add_prepared(TAUGHT, taught.references[0])
        store_catalog.apply_changes(base, hq.changes_since(base), hq.version)
    with pytest.raises(NothingToUndo, match="HQ's catalog holds it now"):
        kiosk.undo_teach(TAUGHT)
    assert store_catalog.product(TAUGHT)["name"] == "Approved at HQ"


class FakeSync:
    """What `connect_sync` uses of a `KioskSync`: records enrollments, answers withdrawals as told."""

    def __init__(self, answer: str | Exception = "withdrawal queued") -> None:
        self.config = SimpleNamespace(kiosk_id="k1")
        self.sent: list[Enrollment] = []
        self.withdrawn: list[tuple[str, float]] = []
        self.answer = answer

    def send_enrollment(self, enrollment: Enrollment) -> None:
        self.sent.append(enrollment)

    def withdraw_enrollment(self, product_id: str, created: float) -> str:
        self.withdrawn.append((product_id, created))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def publish_event(self, payload: bytes) -> None:
        pass


def test_undoing_an_enrolled_teach_withdraws_exactly_that_enrollment(
    kiosk: Kiosk, sample_set: SampleSet, unknown_id: str
) -> None:
    sync = FakeSync()
    kiosk.connect_sync(sync)  # type: ignore[arg-type]
    frames = views_of(sample_set, unknown_id)
    assert kiosk.teach(TAUGHT, "New", frames=frames[:1]).sent_to_hq
    kiosk.teach(TAUGHT, "ignored", frames=frames[1:], add_to_existing=True)
    first, more = sync.sent
    assert first.created < more.created
    # The newest teach first, each named to HQ by its enrollment's stamp, so the earlier one stays at HQ.
    assert kiosk.undo_teach(TAUGHT)["hq"] == "withdrawal queued"
    assert sync.withdrawn == [(TAUGHT, more.created)]
    sync.answer = "removed from outbox"
    assert kiosk.undo_teach(TAUGHT) == {
        "product_id": TAUGHT,
        "removed_product": True,
        "references_removed": 1,
        "hq": "removed from outbox",
    }
    assert sync.withdrawn == [(TAUGHT, more.created), (TAUGHT, first.created)]


def test_an_undo_stands_when_sync_cannot_withdraw_its_enrollment(
    kiosk: Kiosk, store_catalog: Catalog, sample_set: SampleSet, unknown_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    sync = FakeSync(SyncError("sync is not running: the enrollment of taught-here cannot be withdrawn now"))
    kiosk.connect_sync(sync)  # type: ignore[arg-type]
    kiosk.teach(TAUGHT, "New", frames=views_of(sample_set, unknown_id))
    with caplog.at_level(logging.INFO, logger="shelfsight.edge_app.kiosk.app"):
        assert kiosk.undo_teach(TAUGHT)["hq"] == "not withdrawn"
    assert TAUGHT not in {p["id"] for p in store_catalog.products()}
    assert "could not be withdrawn from HQ (sync is not running" in caplog.text and "reject it there" in caplog.text
