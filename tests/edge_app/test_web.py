from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from shelfsight.edge_app.camera import FolderSource
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.recognition.state import KioskState
from shelfsight.edge_app.web.app import WebServer, create_app
from shelfsight.edge_app.web.config import WebConfig


@pytest.fixture()
def kiosk(sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig) -> Kiosk:
    return Kiosk(Recognizer(embedder, sample_catalog, full_config))


@pytest.fixture()
def client(kiosk: Kiosk) -> FlaskClient:
    return create_app(kiosk, WebConfig(max_upload_bytes=200_000)).test_client()


def first_query(sample_set: SampleSet) -> tuple[str, bytes]:
    path = next(iter_image_files(sample_set.queries_dir))
    return path.parent.name, path.read_bytes()


def test_search_returns_top_k_with_product_data(client: FlaskClient, sample_set: SampleSet) -> None:
    truth, data = first_query(sample_set)
    response = client.post(
        "/search?k=3", data={"image": (io.BytesIO(data), "q.jpg")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.json
    body = response.json
    assert body["decision"] == "product" and len(body["results"]) == 3
    top = body["results"][0]
    assert top["product_id"] == truth and top["name"] and "price" in top and top["verified"]
    # The raw body works too.
    raw = client.post("/search", data=data, content_type="image/jpeg")
    assert raw.status_code == 200 and raw.json["results"][0]["product_id"] == truth


@pytest.mark.parametrize(
    "payload, status, reason",
    [
        (b"", 400, "empty upload"),
        (b"this is not an image", 400, "not a readable image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, 400, "not a readable image"),  # a truncated JPEG
        (b"x" * 300_000, 413, "too large"),
    ],
)
def test_bad_uploads_get_4xx_with_a_reason(client: FlaskClient, payload: bytes, status: int, reason: str) -> None:
    response = client.post(
        "/search", data={"image": (io.BytesIO(payload), "bad.jpg")}, content_type="multipart/form-data"
    )
    assert response.status_code == status
    assert reason in response.json["error"]
    assert client.get("/health").status_code == 200  # and the service keeps serving


def test_bad_k_is_rejected(client: FlaskClient, sample_set: SampleSet) -> None:
    _, data = first_query(sample_set)
    assert client.post("/search?k=lots", data=data).status_code == 400


def test_health_state_frame_and_thumbnail(client: FlaskClient, sample_catalog: Any, embedder: Embedder) -> None:
    health = client.get("/health").json
    assert health["model_fingerprint"] == embedder.fingerprint
    assert health["catalog_version"] == sample_catalog.version and health["uptime_s"] >= 0 and "fps" in health
    state = client.get("/api/state").json
    assert state["decision"] == "starting" and state["status"] == {"ok": True, "problems": []}
    assert client.get("/api/display").json == {"currency": None, "locale": None, "language": "en"}  # a bare number
    assert client.get("/api/frame.jpg").status_code == 404  # no camera frame yet
    product_id = sample_catalog.products()[0]["id"]
    thumb = client.get(f"/api/thumbnail/{product_id}")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.data)).size == (256, 256)  # catalog.quality.THUMBNAIL_SIZE
    assert client.get("/api/thumbnail/nope").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.data
    assert b"http" not in client.get("/static/app.js").data  # no internet assets


@pytest.fixture()
def product_frames(sample_set: SampleSet, kiosk: Kiosk, tmp_path: Path) -> tuple[str, Path]:
    """A folder 'camera' showing one product from the angles at which single frames recognise it."""
    product = sorted(p.name for p in sample_set.queries_dir.iterdir())[1]
    views = [*iter_image_files(sample_set.catalog_dir / product), *iter_image_files(sample_set.queries_dir / product)]
    kept = [p for p in views if kiosk.recognizer.recognize(load_rgb(p)).product_id == product]
    assert len(kept) >= 2
    for i, path in enumerate(kept):
        shutil.copy(path, tmp_path / f"{i:03d}.jpg")
    return product, tmp_path


def wait_for(kiosk: Kiosk, predicate: Any, limit_s: float = 60.0) -> KioskState:
    """Poll the kiosk until `predicate(state)` holds; the limit only guards against a hang."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        state = kiosk.state()
        if predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"kiosk never reached the expected state; last: {kiosk.state()}")


def test_kiosk_threads_announce_the_product_shown(kiosk: Kiosk, product_frames: tuple[str, Path]) -> None:
    product, folder = product_frames
    kiosk.source = FolderSource(folder, interval_s=0.02, loop=True)
    with kiosk:
        state = wait_for(kiosk, lambda s: s.announcement.decision == "product")
        assert state.announcement.product_id == product
        assert kiosk.frame_jpeg() is not None
        assert kiosk.health()["frames_recognised"] >= 3
    assert kiosk.stats.errors == 0


def test_page_in_headless_chromium_shows_the_recognised_product(
    kiosk: Kiosk, product_frames: tuple[str, Path], sample_catalog: Any, rendered_page: Callable[[str], str]
) -> None:
    product, folder = product_frames
    name = sample_catalog.product(product)["name"]
    kiosk.source = FolderSource(folder, interval_s=0.05, loop=True)
    with kiosk, WebServer(create_app(kiosk, WebConfig(currency="SEK", locale="sv-SE")), "127.0.0.1", 0) as server:
        wait_for(kiosk, lambda s: s.announcement.product_id == product)
        dom = rendered_page(server.url + "/")
    assert f'<h1 id="product-name">{name}</h1>' in dom, dom[-2000:]
    # Swedish format: decimal comma, then the currency after a (no-break) space.
    price = f"{sample_catalog.product(product)['price']:.2f}".replace(".", ",")
    assert re.search(rf'<p id="product-price" class="price">{price}(&nbsp;|\s)kr</p>', dom), dom[-2000:]
    assert 'data-decision="product"' in dom
    assert 'class="card"' in dom or 'class="card "' in dom


def test_kiosk_learns_a_textured_empty_view(
    sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig, sample_set: SampleSet
) -> None:
    from shelfsight.edge_app.camera import Frame
    from shelfsight.edge_app.demo.samples import (
        Pose,
        cluttered_background,
        compose,
        photometric,
        render_package,
    )

    config = full_config.model_copy(update={"background_frames": 5})
    kiosk = Kiosk(Recognizer(embedder, sample_catalog, config))
    rng = np.random.default_rng(5)
    wall = cluttered_background(rng, 480, 360)  # a poster wall: far too textured to look "empty"
    decisions = [kiosk.process(Frame(photometric(wall, rng, 0.1), 0.0, i)).frame.decision for i in range(8)]  # type: ignore[union-attr]
    assert decisions[0] != "empty" and decisions[-1] == "empty" and kiosk.background.learned
    held = compose(wall, render_package(sample_set.designs[2]), Pose(0.5, 0.5, 0.8, yaw=15))
    shown = kiosk.process(Frame(held, 0.0, 9)).frame
    assert shown is not None and shown.product_id == sample_set.designs[2].sku
    again = kiosk.process(Frame(photometric(wall, rng, 0.1), 0.0, 10)).frame
    assert again is not None and again.decision == "empty"


def test_missing_camera_is_reported_while_the_page_keeps_serving(
    kiosk: Kiosk, product_frames: tuple[str, Path], tmp_path: Path
) -> None:
    from shelfsight.edge_app.camera import ReconnectingSource

    product, frames = product_frames
    camera = tmp_path / "camera"
    kiosk.source = ReconnectingSource(
        lambda: FolderSource(camera, interval_s=0.02, loop=True), initial_s=0.05, max_s=0.1
    )
    client = create_app(kiosk).test_client()
    with kiosk:  # starting does not wait for the camera
        deadline = time.monotonic() + 30
        while not (kiosk.camera_status() or {}).get("error") and time.monotonic() < deadline:
            time.sleep(0.02)
        state = client.get("/api/state").json  # the shopper's screen says "out of order", with the reason
        assert state["status"]["ok"] is False
        (problem,) = state["status"]["problems"]
        assert problem["component"] == "camera" and "no such image folder" in problem["reason"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json["status"] == "down"  # a load balancer / systemd sees it
        assert health.json["camera"]["connected"] is False and health.json["problems"] == [problem]
        shutil.copytree(frames, camera)  # plugged in
        wait_for(kiosk, lambda s: s.announcement.product_id == product)
        assert client.get("/api/state").json["status"] == {"ok": True, "problems": []}
        health = client.get("/health")
        assert health.status_code == 200 and health.json["status"] == "ok"
        assert health.json["camera"] == {"name": f"reconnecting:folder:{camera}", "connected": True, "error": None}


def test_a_bad_frame_is_counted_and_the_kiosk_carries_on(kiosk: Kiosk, sample_set: SampleSet) -> None:
    from shelfsight.edge_app.camera import Frame

    before = kiosk.state()
    assert kiosk.process(Frame(np.zeros((8, 8), np.uint8), 0.0, 1)) is before  # not an RGB frame
    assert kiosk.stats.errors == 1 and "RGB" in kiosk.health()["last_error"]
    good = load_rgb(next(iter_image_files(sample_set.catalog_dir / "P0001")))
    assert kiosk.process(Frame(good, 0.0, 2)).frame is not None
    assert kiosk.health()["last_error"] is None
