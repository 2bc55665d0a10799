"""kill -9 of `catalog add`, `catalog remove` and a kiosk's teach at random moments: all or nothing.

Each trial forks a process that runs the command on a copy of one catalog, SIGKILLs it after a
random delay within 1.5x the time a full run takes (measured first, so kills land before, during
and after the write), and classifies what the file holds afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from shelfsight.catalog.store import Catalog
from tests.support.fakes import ProjectionEmbedder, product_photo

PHOTOS = 6
TRIALS = 16
PRODUCT = "kill-me"


def _child(action: Callable[[Path], None], db: Path) -> None:
    try:
        action(db)
    finally:
        os._exit(0)  # no atexit, no pytest teardown in the fork


def _run(action: Callable[[Path], None], db: Path, kill_after: float | None) -> None:
    child = multiprocessing.get_context("fork").Process(target=_child, args=(action, db), daemon=True)
    child.start()
    if kill_after is None:
        child.join(60)
    else:
        time.sleep(kill_after)
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)


def kill_matrix(seed_db: Path, action: Callable[[Path], None], state: Callable[[Path], str], work: Path) -> Counter:
    """Outcomes (`state` of the file) of TRIALS kills of `action` on copies of `seed_db`."""
    calibration = work / "calibration.db"
    shutil.copy(seed_db, calibration)
    started = time.monotonic()
    _run(action, calibration, None)
    window = time.monotonic() - started
    assert state(calibration) == "all", "the command did not complete when left alone"
    rng = np.random.default_rng(0)
    outcomes: Counter = Counter()
    for trial in range(TRIALS):
        db = work / f"trial-{trial}.db"
        shutil.copy(seed_db, db)
        _run(action, db, float(rng.uniform(0, 1.5 * window)))
        outcomes[state(db)] += 1
    return outcomes


def _references(db: Path) -> int | None:
    """How many references PRODUCT has (None: no such product); opening also recovers the WAL."""
    with Catalog(db, create=False) as catalog:
        products = {p["id"]: p for p in catalog.products()}
        assert catalog.stats()["references"] == sum(len(p["references"]) for p in products.values())
        return len(products[PRODUCT]["references"]) if PRODUCT in products else None


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(PHOTOS):
        path = tmp_path / f"photo-{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(product_photo(100 + i), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


@pytest.fixture
def seed_db(tmp_path: Path) -> Path:
    path = tmp_path / "seed.db"
    with Catalog(path) as catalog:
        catalog.add_product("other", "Other")
    return path


def test_kill_nine_during_catalog_add(tmp_path: Path, seed_db: Path, photos: list[Path], tiny_model: Path) -> None:
    from shelfsight.edge_app.cli import build_cli

    def add(db: Path) -> None:
        images = [arg for path in photos for arg in ("--image", str(path))]
        args = ["catalog", "add", "--db", str(db), PRODUCT, "--name", "Kill me", *images, "--model", str(tiny_model)]
        build_cli().main(args, standalone_mode=False)

    def state(db: Path) -> str:
        count = _references(db)
        return "none" if count is None else "all" if count == PHOTOS else f"partial ({count} photos)"

    outcomes = kill_matrix(seed_db, add, state, tmp_path)
    assert set(outcomes) == {"none", "all"}, outcomes


def test_kill_nine_during_catalog_remove(tmp_path: Path, seed_db: Path, photos: list[Path]) -> None:
    from shelfsight.catalog.ingest import add_product_photos
    from shelfsight.edge_app.cli import build_cli

    with Catalog(seed_db) as catalog:
        add_product_photos(catalog, ProjectionEmbedder(seed=1), PRODUCT, photos, name="Kill me")

    def remove(db: Path) -> None:
        build_cli().main(["catalog", "remove", "--db", str(db), PRODUCT], standalone_mode=False)

    def state(db: Path) -> str:
        count = _references(db)
        return "all" if count is None else "none" if count == PHOTOS else f"partial ({count} photos)"

    outcomes = kill_matrix(seed_db, remove, state, tmp_path)
    assert set(outcomes) <= {"none", "all"} and outcomes["all"] > 0, outcomes


def test_kill_nine_during_teach(tmp_path: Path, seed_db: Path) -> None:
    from shelfsight.edge_app.kiosk.app import Kiosk
    from shelfsight.edge_app.recognition import Recognizer

    frames = [product_photo(200 + i) for i in range(PHOTOS)]

    def teach(db: Path) -> None:
        with Catalog(db) as catalog:
            Kiosk(Recognizer(ProjectionEmbedder(seed=1), catalog)).teach(PRODUCT, "Kill me", frames=frames)

    def state(db: Path) -> str:
        count = _references(db)
        return "none" if count is None else "all" if count == PHOTOS else f"partial ({count} photos)"

    outcomes = kill_matrix(seed_db, teach, state, tmp_path)
    assert set(outcomes) <= {"none", "all"} and outcomes["all"] > 0, outcomes


def test_teach_on_a_full_disk_stores_nothing(tmp_path: Path, seed_db: Path) -> None:
    """SQLite's own "database or disk is full" (a page limit) part-way through a teach's references."""
    from shelfsight.edge_app.core.errors import CatalogError
    from shelfsight.edge_app.kiosk.app import Kiosk
    from shelfsight.edge_app.recognition import Recognizer

    frames = [product_photo(200 + i) for i in range(PHOTOS)]
    scratch = tmp_path / "scratch.db"
    shutil.copy(seed_db, scratch)
    with Catalog(scratch) as catalog:
        before = int(catalog.db.execute("PRAGMA page_count").fetchone()[0])
        Kiosk(Recognizer(ProjectionEmbedder(seed=1), catalog)).teach(PRODUCT, "Kill me", frames=frames)
        needed = int(catalog.db.execute("PRAGMA page_count").fetchone()[0]) - before
    assert needed > 2
    with Catalog(seed_db) as catalog:
        catalog.db.execute(f"PRAGMA max_page_count = {before + needed - 1}")
        kiosk = Kiosk(Recognizer(ProjectionEmbedder(seed=1), catalog))
        with pytest.raises(CatalogError, match="database or disk is full"):
            kiosk.teach(PRODUCT, "Kill me", frames=frames)
        assert [p["id"] for p in catalog.products()] == ["other"] and catalog.stats()["references"] == 0
    assert _references(seed_db) is None
