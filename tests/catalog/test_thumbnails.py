"""Product thumbnails: made from the sharpest reference by build, add and approve; set by hand; synced."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.ingest import add_product_photos, build_catalog, collect_entries
from shelfsight.catalog.quality import THUMBNAIL_SIZE, sharpness, stored_jpeg, thumbnail_jpeg
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.messages import EnrolledFrame, Enrollment
from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.core.images import decode_rgb
from tests.catalog.test_ingest import save
from tests.support.fakes import ProjectionEmbedder, product_photo


def soft(rgb: np.ndarray) -> np.ndarray:
    """A softer (still acceptable) view of `rgb`: a 3x3 box blur."""
    padded = np.pad(rgb.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = sum(padded[y : y + rgb.shape[0], x : x + rgb.shape[1]] for y in range(3) for x in range(3)) / 9
    return out.astype(np.uint8)


def sharpest_thumbnail(catalog: Catalog, product_id: str) -> bytes:
    """What the thumbnail must be: made from the stored image of the product's sharpest reference."""
    stored = [decode_rgb(catalog.reference_image(r)) for r in catalog.product(product_id)["references"]]  # type: ignore[arg-type]
    return thumbnail_jpeg(max(stored, key=sharpness))


def test_a_build_gives_each_product_its_sharpest_reference_as_thumbnail(
    tmp_path: Path, embedder: ProjectionEmbedder
) -> None:
    photos = tmp_path / "photos"
    sharp = product_photo(5, size=(640, 480))
    save(photos / "cola" / "a-soft.jpg", soft(product_photo(7, size=(640, 480))))
    save(photos / "cola" / "b-sharp.jpg", sharp)
    save(photos / "chips" / "one.jpg", product_photo(6, size=(640, 480)))
    report = build_catalog(tmp_path / "store.db", embedder, collect_entries(photos))
    assert report.thumbnails == ["chips", "cola"] and any("thumbnails: 2 made" in line for line in report.lines())
    with Catalog(tmp_path / "store.db") as catalog:
        for product_id in ("cola", "chips"):
            thumb = catalog.thumbnail(product_id)
            assert thumb == sharpest_thumbnail(catalog, product_id)
            image = Image.open(io.BytesIO(thumb))  # type: ignore[arg-type]
            assert image.format == "JPEG" and max(image.size) <= THUMBNAIL_SIZE
        by_source = {Path(r["source"]).name: r["id"] for r in catalog.references()}
        sharp_copy, soft_copy = (
            decode_rgb(catalog.reference_image(by_source[n])) for n in ("b-sharp.jpg", "a-soft.jpg")
        )  # type: ignore[arg-type]
        assert catalog.thumbnail("cola") == thumbnail_jpeg(sharp_copy) != thumbnail_jpeg(soft_copy)
        version = catalog.version
    again = build_catalog(tmp_path / "store.db", embedder, collect_entries(photos))
    assert again.thumbnails == [] and again.version == version  # kept, not remade


def test_add_makes_one_and_keeps_a_set_one(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    first = save(tmp_path / "cola1.jpg", product_photo(1))
    with Catalog(tmp_path / "store.db") as catalog:
        add_product_photos(catalog, embedder, "cola", [first], name="Cola")
        assert catalog.thumbnail("cola") == sharpest_thumbnail(catalog, "cola")
        catalog.add_product("soap", "Soap")
        assert catalog.fill_thumbnails() == []  # no reference image: nothing to make one from
        assert catalog.thumbnail("soap") is None

        packshot = io.BytesIO()
        Image.fromarray(product_photo(9, size=(1200, 900))).save(packshot, format="PNG")
        catalog.set_thumbnail("cola", packshot.getvalue())
        chosen = catalog.thumbnail("cola")
        assert Image.open(io.BytesIO(chosen)).size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)  # type: ignore[arg-type]
        add_product_photos(catalog, embedder, "cola", [save(tmp_path / "cola2.jpg", product_photo(2))])
        assert catalog.thumbnail("cola") == chosen


def run(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), ["catalog", *args], catch_exceptions=False)


def test_set_thumbnail_command(tmp_path: Path) -> None:
    db = str(tmp_path / "store.db")
    with Catalog(db) as catalog:
        catalog.add_product("cola", "Cola")
    image = save(tmp_path / "packshot.png", product_photo(3, size=(800, 600)))
    result = run("set-thumbnail", "--db", db, "cola", str(image))
    assert result.exit_code == 0 and "thumbnail of cola set; catalog version 2" in result.output, result.output
    with Catalog(db) as catalog:
        assert Image.open(io.BytesIO(catalog.thumbnail("cola"))).format == "JPEG"  # type: ignore[arg-type]

    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not a jpeg")
    bad = run("set-thumbnail", "--db", db, "cola", str(junk))
    assert bad.exit_code == 1 and "not a readable image" in bad.output and "Traceback" not in bad.output
    missing = run("set-thumbnail", "--db", db, "nope", str(image))
    assert missing.exit_code == 1 and "no product 'nope'" in missing.output
    with Catalog(db) as catalog:
        assert catalog.version == 2


def test_hq_approve_makes_the_thumbnail_and_keeps_price_and_description(
    tmp_path: Path, embedder: ProjectionEmbedder
) -> None:
    photos = [product_photo(20, size=(256, 256)), product_photo(21, size=(256, 256))]
    frames = [
        EnrolledFrame(
            embedding=embedder.embed_image(rgb).tolist(),
            fingerprint=embedder.fingerprint,
            image_jpeg=base64.b64encode(stored_jpeg(rgb)).decode(),
        )
        for rgb in photos
    ]
    with Catalog(tmp_path / "master.db") as master, EnrollmentInbox(tmp_path / "inbox.db") as inbox:
        entry = inbox.add(Enrollment(kiosk_id="k1", product_id="jam", name="Jam", frames=frames))
    approve = ["hq", "approve", str(entry), "--inbox", str(tmp_path / "inbox.db"), "--db", str(tmp_path / "master.db")]
    result = CliRunner().invoke(build_cli(), [*approve, "--price", "3.50", "--description", "Strawberry, 350 g"])
    assert result.exit_code == 0, result.output
    with Catalog(tmp_path / "master.db") as master:
        assert master.thumbnail("jam") == sharpest_thumbnail(master, "jam")
        product = master.product("jam")
        assert (product["price"], product["description"]) == (3.5, "Strawberry, 350 g")


def test_thumbnails_travel_in_deltas_and_snapshots(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    with Catalog(tmp_path / "hq.db") as hq, Catalog(tmp_path / "kiosk.db") as kiosk:
        add_product_photos(hq, embedder, "cola", [save(tmp_path / "c.jpg", product_photo(1))], name="Cola")
        kiosk.apply_changes(0, hq.changes_since(0), hq.version)
        assert kiosk.thumbnail("cola") == hq.thumbnail("cola") is not None
    with Catalog(tmp_path / "hq.db") as hq, Catalog(tmp_path / "fresh.db") as fresh:
        fresh.replace_with_snapshot(hq.export_snapshot())
        assert fresh.thumbnail("cola") == hq.thumbnail("cola")


def test_a_damaged_stored_image_is_skipped(tmp_path: Path, embedder: ProjectionEmbedder) -> None:
    product_id = "cola"
    with Catalog(tmp_path / "store.db") as catalog:
        catalog.add_product(product_id, "Cola")
        catalog.add_reference(product_id, product_photo(1), embedder)
        catalog.add_reference(product_id, product_photo(2), embedder)
        [damaged, good] = catalog.product(product_id)["references"]
        catalog.db.execute("UPDATE reference_images SET image_jpeg = ? WHERE id = ?", [b"\xff\xd8 broken", damaged])
        assert catalog.fill_thumbnails() == [product_id]
        assert catalog.thumbnail(product_id) == thumbnail_jpeg(decode_rgb(catalog.reference_image(good)))  # type: ignore[arg-type]
