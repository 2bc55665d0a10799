"""Ingestion: ImageFolder and CSV sources, rejected and duplicate photos, atomic builds, reembed."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shelfsight.catalog.ingest as ingest_module
from shelfsight.catalog.ingest import (
    IngestOptions,
    add_product_photos,
    build_catalog,
    collect_entries,
    read_products_csv,
    reembed,
    remove_stale_builds,
)
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.errors import CatalogError, InputError
from tests.support.fakes import ProjectionEmbedder, product_photo


def save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for p, product in enumerate(["cola", "chips", "soap"]):
        for v in range(2):
            save(root / product / f"view{v}.jpg", product_photo(10 * p + v))
    save(root / "cola" / "copy.png", product_photo(0))  # near-duplicate of cola/view0
    (root / "chips" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    save(root / "soap" / "tiny.jpg", product_photo(40, size=(30, 30)))
    save(root / "soap" / "blurry.jpg", np.full((100, 100, 3), 128, np.uint8))
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_from_folder_reports_rejections(tmp_path: Path, photos: Path, embedder: ProjectionEmbedder) -> None:
    db = tmp_path / "store.db"
    report = build_catalog(db, embedder, collect_entries(photos))
    assert sorted(report.products_added) == ["chips", "cola", "soap"]
    assert report.references_added == 6
    assert {Path(p).name: reason for p, reason in report.rejected}.keys() == {"broken.jpg", "tiny.jpg", "blurry.jpg"}
    reasons = " ".join(reason for _, reason in report.rejected)
    assert "not a readable image" in reasons and "too small" in reasons and "too blurry" in reasons
    assert [(Path(a).name, Path(b).name) for a, b, _ in report.duplicates] == [("view0.jpg", "copy.png")]
    assert any("near-duplicate" in line for line in report.lines())
    assert report.unrecognisable == [] and not any("WARNING" in line for line in report.lines())
    with Catalog(db, create=False) as cat:
        assert cat.version == report.version == 12  # 3 products, 6 references, 3 thumbnails
        assert cat.search_image(product_photo(11), embedder, k=1)[0].product_id == "chips"
        assert not list(tmp_path.glob(".store.db.building*"))

    again = build_catalog(db, embedder, collect_entries(photos))  # idempotent: nothing new, no version bump
    assert again.references_added == 0 and again.already_present == 6 and again.version == 12


def test_csv_with_folder(tmp_path: Path, photos: Path, embedder: ProjectionEmbedder) -> None:
    csv_path = tmp_path / "products.csv"
    extra = save(tmp_path / "extra" / "soap-back.jpg", product_photo(77))
    csv_path.write_text(
        "sku,name,category,price,brand,images\n"
        "cola,Cola 330ml,drinks,1.20,Fizz,\n"
        f"soap,Hand soap,care,3,,{extra.relative_to(tmp_path)}\n"
    )
    db = tmp_path / "store.db"
    first = build_catalog(db, embedder, collect_entries(photos, csv_path))
    assert first.references_added == 7
    with Catalog(db) as cat:
        assert cat.product("cola")["attributes"] == {"brand": "Fizz"} and cat.product("cola")["price"] == 1.2
        assert cat.product("chips")["name"] == "chips"  # folder-only product
        assert len(cat.product("soap")["references"]) == 3
    csv_path.write_text("sku,name,category,price\ncola,Cola 330ml,drinks,1.50\n")
    report = build_catalog(db, embedder, collect_entries(None, csv_path))
    assert report.products_updated == ["cola"] and report.version == first.version + 1
    folder_only = build_catalog(db, embedder, collect_entries(photos))
    assert folder_only.products_updated == [] and folder_only.version == report.version
    with Catalog(db) as cat:
        assert cat.product("cola")["name"] == "Cola 330ml"  # a folder name never overrides the CSV's
        assert all(Path(ref["source"]).is_absolute() for ref in cat.references())


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,price\nCola,1\n", "needs a 'sku'"),
        ("sku,name,price\ncola,Cola,cheap\n", r"products.csv:2: price 'cheap' is not a number"),
        ("sku,name\ncola,Cola\ncola,Cola again\n", r"products.csv:3: product cola appears twice"),
        ("sku,name\ncola,\n", "has no name"),
        ("sku,name\n", "no products"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "products.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_products_csv(path)


def only_cola(photos: Path) -> list:
    return [e for e in collect_entries(photos) if e.product_id == "cola"]


class FailingEmbedder(ProjectionEmbedder):
    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        if self.calls >= 2:
            raise KeyboardInterrupt  # the operator pressed Ctrl-C mid-build
        return super().embed_batch(batch)


def test_interrupted_build_leaves_previous_catalog(tmp_path: Path, photos: Path, embedder: ProjectionEmbedder) -> None:
    db = tmp_path / "store.db"
    build_catalog(db, embedder, only_cola(photos))
    before = digest(db)
    with pytest.raises(KeyboardInterrupt):
        build_catalog(db, FailingEmbedder(seed=1), collect_entries(photos), IngestOptions(batch_size=2))
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "store.db"]


def test_full_disk_is_a_clear_error(
    tmp_path: Path, photos: Path, embedder: ProjectionEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "store.db"
    build_catalog(db, embedder, only_cola(photos))
    before = digest(db)

    class SmallDisk(Catalog):
        """The build's working copy may not grow: SQLite reports a full disk, like a real one."""

        def __init__(self, path: Path, **kwargs: object) -> None:
            super().__init__(path, **kwargs)  # type: ignore[arg-type]
            if Path(path).name.startswith("."):
                pages = self.db.execute("PRAGMA page_count").fetchone()[0]
                self.db.execute(f"PRAGMA max_page_count = {pages + 2}")

    monkeypatch.setattr(ingest_module, "Catalog", SmallDisk)
    with pytest.raises(CatalogError, match="full") as info:
        build_catalog(db, embedder, collect_entries(photos), IngestOptions(batch_size=2))
    assert "nothing was changed" in str(info.value)
    assert digest(db) == before
    with Catalog(db) as cat:
        assert cat.stats()["products"] == 1


def test_build_refuses_another_model(tmp_path: Path, photos: Path, embedder: ProjectionEmbedder) -> None:
    db = tmp_path / "store.db"
    build_catalog(db, embedder, collect_entries(photos))
    with pytest.raises(CatalogError, match="reembed"):
        build_catalog(db, ProjectionEmbedder(seed=9), collect_entries(photos))


def test_reembed_from_stored_copies(tmp_path: Path, photos: Path, embedder: ProjectionEmbedder) -> None:
    db = tmp_path / "store.db"
    build_catalog(db, embedder, collect_entries(photos))
    shutil.rmtree(photos)
    new_model = ProjectionEmbedder(seed=2, dim=48)
    with Catalog(db) as cat:
        version = reembed(cat, new_model)
        assert cat.model_fingerprint == new_model.fingerprint and cat.embedding_dim == 48 and version == 13
        assert cat.search_image(product_photo(20), new_model, k=1)[0].product_id == "soap"
        with pytest.raises(CatalogError, match="reembed"):
            cat.search_image(product_photo(20), embedder)


def test_reembed_needs_some_image(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    with Catalog(tmp_path / "c.db") as cat:
        cat.add_product("cola", "Cola")
        cat.add_reference_vector(
            "cola", np.ones(32), fingerprint=embedder.fingerprint, phash="", source="", image_jpeg=None, keypoints=None
        )
        with pytest.raises(CatalogError, match="no copy was stored"):
            reembed(cat, ProjectionEmbedder(seed=3))
        assert cat.model_fingerprint == embedder.fingerprint


def test_exif_orientation_is_applied(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    photo = product_photo(5, size=(160, 160))
    photo[:80] = (255, 0, 0)  # red top half as seen by a viewer
    stored_upside_down = Image.fromarray(photo[::-1, ::-1].copy())
    exif = stored_upside_down.getexif()
    exif[0x0112] = 3  # Orientation: rotate 180 to display
    (tmp_path / "photos" / "cola").mkdir(parents=True)
    stored_upside_down.save(tmp_path / "photos" / "cola" / "rotated.jpg", exif=exif, quality=95)
    db = tmp_path / "store.db"
    build_catalog(db, embedder, collect_entries(tmp_path / "photos"))
    with Catalog(db) as cat:
        (reference_id,) = cat.product("cola")["references"]
        image = np.asarray(Image.open(io.BytesIO(cat.reference_image(reference_id))))
    top, bottom = (
        image[: len(image) // 4].reshape(-1, 3).mean(axis=0),
        image[-len(image) // 4 :].reshape(-1, 3).mean(axis=0),
    )
    assert top[0] > 200 and top[1] < 60 and not (bottom[0] > 200 and bottom[1] < 60)


def test_small_sharp_crops_pass_and_blur_is_judged_without_enlarging():
    """In-store crops are often under 100 px; judging them after enlargement called every one blurry."""
    import cv2

    from shelfsight.catalog.quality import QualityLimits, check_image, sharpness

    rng = np.random.default_rng(3)
    # a shelf-crop-sized packaging print: fine text-like detail
    small = cv2.resize(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), (72, 96), interpolation=cv2.INTER_NEAREST)
    check_image(small, QualityLimits(), "crop.jpg")  # no error
    smeared = cv2.GaussianBlur(small, (0, 0), 6)
    assert sharpness(smeared) < QualityLimits().min_sharpness < sharpness(small)
    with pytest.raises(InputError, match="too blurry"):
        check_image(smeared, QualityLimits(), "smeared.jpg")


def test_a_product_whose_every_photo_is_rejected_is_named(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    root = tmp_path / "photos"
    save(root / "cola" / "view.jpg", product_photo(1))
    save(root / "gum" / "tiny.jpg", product_photo(2, size=(30, 30)))
    report = build_catalog(tmp_path / "store.db", embedder, collect_entries(root))
    assert report.unrecognisable == ["gum"]
    assert any(
        line.startswith("WARNING: 1 products have no usable reference photo") and "gum" in line
        for line in report.lines()
    )


class _StuckEmbedder(ProjectionEmbedder):
    """Never finishes a batch: the build it serves is mid-way for as long as the test needs."""

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(60)
        return super().embed_batch(batch)


def _start_build(db: Path, seed: int) -> multiprocessing.Process:
    """A forked `build_catalog` of `db` with a new photo, stuck mid-way, once its working copy exists."""
    folder = db.parent / f"more-{seed}"
    save(folder / f"new-{seed}" / "view.jpg", product_photo(seed))

    def child() -> None:
        try:
            build_catalog(db, _StuckEmbedder(seed=1), collect_entries(folder))
        finally:
            os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    process.start()
    # The copy's WAL: copied and opened for ingest (a build of `db` started earlier would see `db` open).
    wal = db.with_name(f".{db.name}.building-{process.pid}-wal")
    deadline = time.monotonic() + 30
    while not wal.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wal.exists()
    return process


def _copies(db: Path) -> set[str]:
    return {p.name for p in db.parent.iterdir() if ".building-" in p.name}


def test_a_killed_builds_copy_is_removed_by_the_next_build(
    tmp_path: Path, photos: Path, embedder: ProjectionEmbedder
) -> None:
    db = tmp_path / "store.db"
    build_catalog(db, embedder, collect_entries(photos))
    killed = _start_build(db, 70)
    os.kill(killed.pid or 0, signal.SIGKILL)
    killed.join(10)
    assert f".{db.name}.building-{killed.pid}" in _copies(db)  # kill -9 ran no cleanup
    running = _start_build(db, 71)  # which removes it on its way in
    assert not any(str(killed.pid) in name for name in _copies(db))
    # A release before the lock left copies without a lock file; this pid runs no build.
    old = tmp_path / f".{db.name}.building-{2**22 + 12345}"
    old.write_bytes(b"a full-size copy")
    try:
        build_catalog(db, embedder, collect_entries(photos))
        # The killed build's copy is gone; the running build's copy and lock are untouched.
        assert {name.split("-wal")[0].split("-shm")[0] for name in _copies(db)} == {
            f".{db.name}.building-{running.pid}",
            f".{db.name}.building-{running.pid}.lock",
        }
    finally:
        os.kill(running.pid or 0, signal.SIGKILL)
        running.join(10)
    assert [p.name for p in remove_stale_builds(db)] == [f".{db.name}.building-{running.pid}"]
    assert _copies(db) == set()
    with Catalog(db, create=False) as catalog:
        assert catalog.stats()["references"] == 6


def test_names_that_are_not_utf8_are_rejected_per_file(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    """Linux file names are bytes: b"\\xff.jpg" and a folder b"caf\\xe9" (Latin-1) reach Python as surrogates."""
    root = tmp_path / "photos"
    save(root / "cola" / "view0.jpg", product_photo(1))
    save(root / "cola" / os.fsdecode(b"\xff.jpg"), product_photo(2))
    save(root / os.fsdecode(b"caf\xe9") / "view0.jpg", product_photo(3))
    db = tmp_path / "store.db"
    report = build_catalog(db, embedder, collect_entries(root))
    assert report.products_added == ["cola"] and report.references_added == 1
    assert sorted(report.rejected) == [
        (f"{root}/caf\\xe9/view0.jpg", "folder name is not valid UTF-8; rename it"),
        (f"{root}/cola/\\xff.jpg", "file name is not valid UTF-8; rename it"),
    ]
    "\n".join(report.lines()).encode("utf-8")  # printable as it is
    with Catalog(db, create=False) as catalog:
        assert [p["id"] for p in catalog.products()] == ["cola"]
        with pytest.raises(InputError, match=r"\\xff.jpg: file name is not valid UTF-8"):
            add_product_photos(catalog, embedder, "cola", [root / "cola" / os.fsdecode(b"\xff.jpg")])


def test_csv_rows_and_folders_that_do_not_match_are_warned_about(
    tmp_path: Path, photos: Path, embedder: ProjectionEmbedder
) -> None:
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("sku,name,price\ncola,Cola,1.2\nCHIPS-1,Chips,2.5\nsoap,Soap,3\n")
    report = build_catalog(tmp_path / "store.db", embedder, collect_entries(photos, csv_path))
    assert report.warnings == [
        f"CSV row CHIPS-1 matches no folder in {photos}",
        f"folder chips has no row in {csv_path} (no name or price)",
    ]
    lines = report.lines()
    assert f"WARNING: CSV row CHIPS-1 matches no folder in {photos}" in lines
    assert not build_catalog(tmp_path / "other.db", embedder, collect_entries(photos)).warnings  # folders alone
