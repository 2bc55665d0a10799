"""The running kiosk follows catalog changes another process makes to its SQLite file, and survives broken ones."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from click.testing import CliRunner

from shelfsight.catalog.cli import catalog_group
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError, ConfigError
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.kiosk.config import parse_config
from shelfsight.edge_app.kiosk.watch import CatalogWatcher
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from tests.support.teaching import views_of

WAIT_S = 20.0  # a bound for the watcher thread to notice, far above its interval; never a timing assert


@pytest.fixture()
def catalog_path(tmp_path: Path, sample_catalog: Any) -> Path:
    """A store's catalog file: a copy of the sample catalog."""
    path = tmp_path / "store.db"
    with Catalog(path) as catalog:
        catalog.replace_with_snapshot(json.loads(json.dumps(sample_catalog.export_snapshot())))
    return path


@pytest.fixture()
def kiosk(catalog_path: Path, embedder: Embedder, full_config: RecognitionConfig) -> Iterator[Kiosk]:
    kiosk = Kiosk(Recognizer(embedder, Catalog(catalog_path, create=False), full_config))
    kiosk.recognizer.catalog.index()
    yield kiosk
    kiosk.recognizer.catalog.close()  # the one it serves now: a reopen may have swapped it


def searched(kiosk: Kiosk, frames: list[np.ndarray]) -> list[str | None]:
    return [kiosk.search(rgb).product_id for rgb in frames]


def indexed(kiosk: Kiosk) -> set[str]:
    return set(kiosk.recognizer.catalog.index().product_ids)


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_product_removed_with_the_cli_is_no_longer_found_by_the_running_kiosk(
    kiosk: Kiosk, catalog_path: Path, sample_set: SampleSet
) -> None:
    gone = sorted(indexed(kiosk))[0]
    frames = views_of(sample_set, gone)
    assert searched(kiosk, frames) == [gone] * len(frames)
    with CatalogWatcher(kiosk, interval_s=0.05):
        result = CliRunner().invoke(catalog_group, ["remove", "--db", str(catalog_path), gone])
        assert result.exit_code == 0, result.output
        assert wait_until(lambda: gone not in indexed(kiosk))
    assert gone not in searched(kiosk, frames)
    with pytest.raises(CatalogError):
        kiosk.product_info(gone)


def test_a_local_product_removed_elsewhere_leaves_no_cached_card_or_announcement(
    kiosk: Kiosk, catalog_path: Path, sample_set: SampleSet, unknown_id: str
) -> None:
    frames = views_of(sample_set, unknown_id)
    with Catalog(catalog_path) as other:
        other.remove_product(unknown_id)
    watcher = CatalogWatcher(kiosk, interval_s=0)
    assert watcher.check() == "reloaded"
    kiosk.teach("taught", "Taught here", frames=frames)  # a local product: removing it keeps the version
    for i, rgb in enumerate(frames):
        kiosk.process(Frame(rgb, time.monotonic(), i))
    assert kiosk.state().announcement.product_id == "taught" and kiosk.product_info("taught")["name"] == "Taught here"
    assert watcher.check() is None  # the kiosk's own teach did not wake the watcher

    with Catalog(catalog_path) as other:  # `shelfsight catalog remove taught`, while the product is announced
        other.remove_product("taught")
    assert watcher.check() == "reloaded"
    assert kiosk.state().announcement.product_id is None
    assert "taught" not in searched(kiosk, frames)
    with pytest.raises(CatalogError):  # the recognizer drops its cached rows at its next frame or search
        kiosk.product_info("taught")
    assert watcher.check() is None


def test_a_change_the_kiosk_already_reloaded_is_not_read_twice(kiosk: Kiosk, catalog_path: Path) -> None:
    watcher = CatalogWatcher(kiosk, interval_s=0)
    with Catalog(catalog_path) as sync:  # sync's worker writes through its own connection, then reloads the kiosk
        sync.update_product(sorted(indexed(kiosk))[0], price=9.99)
    kiosk.reload_catalog()
    assert watcher.check() is None


def test_a_write_that_cannot_be_indexed_is_logged_and_the_last_good_index_keeps_serving(
    kiosk: Kiosk, catalog_path: Path, sample_set: SampleSet, caplog: pytest.LogCaptureFixture
) -> None:
    known = sorted(indexed(kiosk))[0]
    frames = views_of(sample_set, known)
    served = kiosk.recognizer.catalog.index()
    with sqlite3.connect(catalog_path) as other:  # a reference whose product is not there (no foreign keys)
        other.execute(
            "INSERT INTO reference_images (id, product_id, source, phash, embedding, scale, dim, fingerprint, local, "
            "version) SELECT 'orphan/1', 'no-such-product', '', phash, embedding, scale, dim, fingerprint, 1, 0 "
            "FROM reference_images LIMIT 1"
        )
    watcher = CatalogWatcher(kiosk, interval_s=0)
    with caplog.at_level(logging.INFO):
        assert watcher.check() == "reloaded"
    assert "could not be loaded; still serving the previous one" in caplog.text
    assert kiosk.recognizer.catalog.index() is served  # not retried by every frame either
    assert searched(kiosk, frames) == [known] * len(frames)
    errors = kiosk.stats.errors
    kiosk.process(Frame(frames[0], time.monotonic(), 0))
    assert kiosk.stats.errors == errors and kiosk.state().frame.product_id == known  # type: ignore[union-attr]
    assert watcher.check() is None  # tried once per change, not at every poll

    with sqlite3.connect(catalog_path) as other:  # repaired: the next change is read
        other.execute("DELETE FROM reference_images WHERE id = 'orphan/1'")
    assert watcher.check() == "reloaded" and kiosk.recognizer.catalog.index() is not served


def test_a_catalog_file_replaced_by_garbage_keeps_the_open_one_serving(
    kiosk: Kiosk, catalog_path: Path, sample_set: SampleSet, caplog: pytest.LogCaptureFixture
) -> None:
    known = sorted(indexed(kiosk))[0]
    frames = views_of(sample_set, known)
    watcher = CatalogWatcher(kiosk, interval_s=0)  # it follows the file the kiosk has open
    garbage = catalog_path.with_name("garbage.db")
    garbage.write_bytes(os.urandom(64 * 1024))
    os.replace(garbage, catalog_path)
    with caplog.at_level(logging.INFO):
        assert watcher.check() == "kept"
    assert "the new file cannot serve; still serving the previous one" in caplog.text
    assert searched(kiosk, frames) == [known] * len(frames)
    assert watcher.check() is None  # that replacement was tried once


def test_a_catalog_rebuilt_and_renamed_over_the_open_one_is_opened(
    kiosk: Kiosk, catalog_path: Path, sample_set: SampleSet, tmp_path: Path
) -> None:
    """`catalog build` writes a new file and renames it over the old one, which the open connection keeps reading."""
    gone = sorted(indexed(kiosk))[0]
    rebuilt = tmp_path / "rebuilt.db"
    with Catalog(catalog_path) as old, Catalog(rebuilt) as new:
        new.replace_with_snapshot(json.loads(json.dumps(old.export_snapshot())))
        new.remove_product(gone)
    before = kiosk.recognizer.catalog
    watcher = CatalogWatcher(kiosk, interval_s=0)
    os.replace(rebuilt, catalog_path)
    assert before.data_version == before.loaded_data_version  # what the old connection sees: no change at all
    assert watcher.check() == "reopened"
    assert kiosk.recognizer.catalog is not before and gone not in indexed(kiosk)
    assert gone not in searched(kiosk, views_of(sample_set, gone))
    assert watcher.check() is None


def test_watch_interval_is_configurable_and_zero_disables_it(kiosk: Kiosk, catalog_path: Path) -> None:
    camera = {"type": "folder", "path": "photos"}
    config = parse_config({"catalog": {"path": "c.db", "watch_interval_s": 0}, "camera": camera})
    assert config.catalog.watch_interval_s == 0
    assert parse_config({"catalog": {"path": "c.db"}, "camera": camera}).catalog.watch_interval_s > 0
    with pytest.raises(ConfigError, match="watch_interval_s"):
        parse_config({"catalog": {"path": "c.db", "watch_interval_s": -1}, "camera": camera})
    with CatalogWatcher(kiosk, interval_s=0) as watcher, Catalog(catalog_path) as other:
        other.remove_product(sorted(indexed(kiosk))[0])
        assert not any(t.name == "catalog-watch" for t in threading.enumerate())
        assert watcher.check() == "reloaded"  # still usable by hand
