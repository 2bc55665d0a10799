"""The kiosk's API as integrators see it: openapi.json is valid, covers every route, and the real answers match it.

Every response below comes from the real app on a real Kiosk and catalog; each is validated
against the schema openapi.json gives for its path, method and status, so the document
cannot drift from the code.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from shelfsight.edge_app.camera import Frame
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.images import iter_image_files, load_rgb
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.web.app import OPENAPI, create_app
from shelfsight.edge_app.web.config import WebConfig
from tests.support.staff import log_in, staff_credential

SPEC: dict[str, Any] = json.loads(OPENAPI.read_text())
POS = "http://pos.store.example:8000"


def conforms(response: Any, path: str, method: str = "get") -> Any:
    """Assert `response` is one the document describes for `path`/`method`, and its JSON fits the schema."""
    described = SPEC["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in described, f"{method.upper()} {path} answered {status}, undocumented: {response.data[:200]!r}"
    assert response.headers["API-Version"] == SPEC["info"]["version"]
    content = described[status].get("content", {})
    if "application/json" not in content:
        return None
    assert response.mimetype == "application/json"
    schema = {**content["application/json"]["schema"], "components": SPEC["components"]}
    jsonschema.validate(response.json, schema, cls=jsonschema.Draft202012Validator)
    return response.json


@pytest.fixture()
def kiosk(sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig) -> Kiosk:
    return Kiosk(Recognizer(embedder, sample_catalog, full_config))


@pytest.fixture()
def app(kiosk: Kiosk, tmp_path: Path) -> Flask:
    return create_app(kiosk, WebConfig(cors_origins=[POS]), staff=staff_credential(tmp_path))


def photo(sample_set: SampleSet, product_id: str | None = None) -> tuple[str, bytes]:
    folder = sample_set.queries_dir / product_id if product_id else sorted(sample_set.queries_dir.iterdir())[0]
    return folder.name, next(iter_image_files(folder)).read_bytes()


def test_the_document_is_valid_openapi_and_covers_every_route(app: Flask) -> None:
    validate(SPEC)
    served = {
        rule.rule.replace("<", "{").replace(">", "}").replace("{path:", "{")
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in ("index", "static_file")
    }
    documented = set(SPEC["paths"])
    assert served == {p.replace("{code}", "{code}") for p in documented}, served ^ documented


def test_search_answers_match_the_document(app: Flask, sample_set: SampleSet) -> None:
    client = app.test_client()
    product, data = photo(sample_set)
    body = conforms(client.post("/search?k=3", data={"image": (io.BytesIO(data), "q.jpg")}), "/search", "post")
    assert body["decision"] == "product" and body["product"]["product_id"] == product
    assert len(body["results"]) == 3 and body["results"][0]["product_id"] == product
    # One confidence scale: the answer's is the best result's, and 0.5 is the announce threshold.
    assert body["confidence"] == body["results"][0]["confidence"] >= 0.5
    assert body["product"]["thumbnail_url"] == f"/api/thumbnail/{product}"
    assert "id" not in body["results"][0] and "score" not in body["results"][0]  # no duplicate or internal fields

    wide = conforms(client.post("/search?k=50", data=data), "/search", "post")  # k is honoured up to 50
    assert len(wide["results"]) == min(50, len(app_products(client, sample_set)))

    grey = Image.new("RGB", (320, 240), (128, 128, 128))
    buffer = io.BytesIO()
    grey.save(buffer, "PNG")
    flat = conforms(client.post("/search", data=buffer.getvalue()), "/search", "post")
    assert flat["decision"] == "empty" and flat["product"] is None and flat["confidence"] == 0.0


def app_products(client: FlaskClient, sample_set: SampleSet) -> list[str]:
    return [p.name for p in sample_set.catalog_dir.iterdir() if p.is_dir()]


def test_search_filters_keep_only_matching_products(app: Flask, sample_set: SampleSet, sample_catalog: Any) -> None:
    client = app.test_client()
    product, data = photo(sample_set)
    category = sample_catalog.product(product)["category"]
    assert category, "the sample products have categories"
    kept = conforms(client.post(f"/search?k=50&category={category.upper()}", data=data), "/search", "post")
    assert kept["results"] and all(r["category"] == category for r in kept["results"])  # case-insensitive
    other = conforms(client.post("/search?category=no-such-category", data=data), "/search", "post")
    assert other["results"] == [] and other["decision"] == "product"  # filters narrow the list, not the decision


@pytest.mark.parametrize(
    ("query", "form", "status", "reason"),
    [
        ("k=51", None, 400, "k must be between 1 and 50"),
        ("k=0", None, 400, "k must be between 1 and 50"),
        ("k=two", None, 400, "k must be one integer"),
        ("kk=5", None, 400, "unknown query parameter 'kk'"),
        ("k=%C2%B2", None, 400, "k must be one integer"),  # "²": a digit to str.isdigit, not to int()
        ("category=" + "&category=".join("abcdefghijk"), None, 400, "at most 10 values"),
        ("", "file", 400, "send the image in the form field 'image' (this form has 'file')"),
        ("", "empty", 400, "empty upload"),
    ],
)
def test_search_errors_name_the_problem(
    app: Flask, sample_set: SampleSet, query: str, form: str | None, status: int, reason: str
) -> None:
    _, data = photo(sample_set)
    client = app.test_client()
    if form == "file":
        response = client.post(f"/search?{query}", data={"file": (io.BytesIO(data), "q.jpg")})
    elif form == "empty":
        response = client.post(f"/search?{query}", data=b"")
    else:
        response = client.post(f"/search?{query}", data=data)
    body = conforms(response, "/search", "post")
    assert response.status_code == status and reason in body["error"]
    assert "Traceback" not in body["error"] and "object at 0x" not in body["error"]


def test_state_products_health_and_display_match_the_document(
    app: Flask, kiosk: Kiosk, sample_set: SampleSet, sample_catalog: Any
) -> None:
    client = app.test_client()
    state = conforms(client.get("/api/state"), "/api/state")
    assert state["decision"] == "starting" and "diagnostics" not in state  # no developer figures for shoppers
    product = sorted(app_products(client, sample_set))[0]
    rgb = load_rgb(next(iter_image_files(sample_set.queries_dir / product)))
    for i in range(kiosk.voter.window):
        kiosk.process(Frame(rgb, time.monotonic(), i))
    state = conforms(client.get("/api/state"), "/api/state")
    assert state["decision"] == "product" and state["product"]["product_id"] == product
    assert state["confidence"] >= 0.5 and all(a["confidence"] < state["confidence"] for a in state["alternatives"])
    log_in(client)
    assert conforms(client.get("/api/state"), "/api/state")["diagnostics"]["frame_index"] == kiosk.voter.window - 1

    card = conforms(client.get(f"/api/products/{product}"), "/api/products/{code}")
    assert card["product_id"] == product and card["name"] == sample_catalog.product(product)["name"]
    sample_catalog.update_product(product, barcode="7310865000001")  # the catalog is the session's: put back below
    try:
        kiosk.recognizer.forget_products()
        scanned = conforms(client.get("/api/products/7310865000001"), "/api/products/{code}")
        assert scanned["product_id"] == product  # a barcode scanner's code finds it
    finally:
        sample_catalog.update_product(product, barcode=None)
    missing = conforms(client.get("/api/products/0000"), "/api/products/{code}")
    assert "no product with id or barcode '0000'" in missing["error"]

    health = conforms(client.get("/health"), "/health")
    assert health["status"] == "ok" and health["problems"] == []
    assert conforms(client.get("/api/display"), "/api/display")["language"] == "en"
    wrong = client.get("/api/nothing-here")
    assert wrong.status_code == 404 and "no such endpoint: GET /api/nothing-here" in wrong.json["error"]


def test_teach_conflict_and_undo_match_the_document(app: Flask, kiosk: Kiosk, sample_set: SampleSet) -> None:
    client = app.test_client()
    log_in(client)
    known, _ = photo(sample_set)
    for i, path in enumerate(iter_image_files(sample_set.queries_dir / known)):
        kiosk.process(Frame(load_rgb(path), time.monotonic(), i))
    looks_known = client.post("/api/teach", json={"product_id": "copy-of-known", "name": "Copy"})
    body = conforms(looks_known, "/api/teach", "post")
    assert looks_known.status_code == 409 and body["similar"]["product_id"] == known
    taught = client.post("/api/teach", json={"product_id": "copy-of-known", "name": "Copy", "confirm_similar": True})
    assert conforms(taught, "/api/teach", "post")["new_product"] is True
    undone = conforms(client.post("/api/teach/undo", json={"product_id": "copy-of-known"}), "/api/teach/undo", "post")
    assert undone == {
        "product_id": "copy-of-known",
        "removed_product": True,
        "references_removed": taught.json["references"],
        "hq": "not sent",  # this kiosk has no sync
    }
    # The undo started the vote afresh: the screen never shows a product the catalog just lost.
    assert conforms(client.get("/api/state"), "/api/state")["decision"] == "starting"
    again = client.post("/api/teach/undo", json={"product_id": "copy-of-known"})
    assert again.status_code == 404 and conforms(again, "/api/teach/undo", "post")["error"]
    wrong = client.post("/api/teach/undo", json={"product": "copy-of-known"})
    assert wrong.status_code == 400 and "unknown fields: product" in wrong.json["error"]


def test_metrics_count_frames_decisions_and_health(app: Flask, kiosk: Kiosk, sample_set: SampleSet) -> None:
    client = app.test_client()
    product, _ = photo(sample_set)
    rgb = load_rgb(next(iter_image_files(sample_set.queries_dir / product)))
    for i in range(4):
        kiosk.process(Frame(rgb, time.monotonic(), i))
    response = client.get("/metrics")
    conforms(response, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(response.data.decode())}
    frames = {s.labels["decision"]: s.value for s in families["shelfsight_frames"].samples if s.name.endswith("_total")}
    assert frames["product"] == 4 and frames["unknown"] == 0
    announced = {
        s.labels["decision"]: s.value for s in families["shelfsight_announcements"].samples if s.name.endswith("_total")
    }
    assert announced["product"] == 1  # one change of announcement, not one per frame
    invokes = [s for s in families["shelfsight_stage_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["stage"]: s.value for s in invokes}["invoke"] == 4
    up = {s.labels["component"]: s.value for s in families["shelfsight_up"].samples}
    assert up == {"camera": 1.0, "catalog": 1.0, "recognition": 1.0, "sync": 1.0}


def test_event_stream_starts_with_the_current_announcement(app: Flask, kiosk: Kiosk, sample_set: SampleSet) -> None:
    product, _ = photo(sample_set)
    rgb = load_rgb(next(iter_image_files(sample_set.queries_dir / product)))
    for i in range(kiosk.voter.window):
        kiosk.process(Frame(rgb, time.monotonic(), i))
    client = app.test_client()
    response = client.get("/api/events", buffered=False)
    conforms(response, "/api/events")
    assert response.mimetype == "text/event-stream"
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry:")
    first = next(chunks).decode()
    assert first.startswith("id: ") and "event: announcement" in first
    event = json.loads(first.split("data: ", 1)[1])
    schema = {**SPEC["components"]["schemas"]["Event"], "components": SPEC["components"]}
    jsonschema.validate(event, schema, cls=jsonschema.Draft202012Validator)
    assert event["decision"] == "product" and event["product"]["product_id"] == product
    others = [app.test_client().get("/api/events", buffered=False) for _ in range(2)]
    assert [r.status_code for r in others] == [200, 503]  # web.event_streams = 2: the third waits
    assert "event streams" in conforms(others[1], "/api/events")["error"]
    for r in (response, *others):
        r.close()
    for _ in range(3):  # HEAD (a monitoring probe) never starts the body: its slot must still come back
        assert client.head("/api/events").status_code == 200
    again = app.test_client().get("/api/events", buffered=False)
    assert again.status_code == 200
    again.close()


def test_cors_lets_the_configured_origin_read_and_nobody_else(app: Flask, sample_set: SampleSet) -> None:
    client = app.test_client()
    _, data = photo(sample_set)
    allowed = client.post("/search", data=data, headers={"Origin": POS})
    assert allowed.headers["Access-Control-Allow-Origin"] == POS
    other = client.post("/search", data=data, headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options("/search", headers={"Origin": POS, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and "POST" in preflight.headers["Access-Control-Allow-Methods"]
    staff_area = client.options("/api/teach", headers={"Origin": POS, "Access-Control-Request-Method": "POST"})
    assert staff_area.status_code == 403  # the staff tools are never offered to another origin
    assert "Access-Control-Allow-Origin" not in client.get("/api/state", headers={"Origin": POS}).headers
