"""HTTP API and the kiosk page.

    GET  /                  the kiosk page (static HTML + JS + CSS from this package)
    GET  /api/state         the announced product, the latest frame's result, rates
    GET  /api/frame.jpg     the latest camera frame with the region of interest drawn
    GET  /api/thumbnail/ID  a product's thumbnail from the catalog
    POST /search            an image (multipart field "image", or the raw body) -> top-k JSON
    POST /api/teach         teach the product the camera just saw (JSON or form: product_id, name,
                            optional price, description, category) -> 201 {"product_id", "references", ...}
    GET  /health            model fingerprint, catalog version, uptime, fps

Bad uploads get a 4xx JSON body {"error": reason}: 400 for zero bytes or a
file that is not a decodable image, 413 for one over the configured size.
A refused teach request gets 400 with the reason (bad id, no name, bad price,
no usable camera frame).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import unicodedata
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory
from waitress.server import create_server
from werkzeug.exceptions import HTTPException

from shelfsight.edge_app.core.errors import ImageError, InputError, ShelfsightError
from shelfsight.edge_app.core.images import BoundedDecoder, ImageTooLarge
from shelfsight.edge_app.recognition.state import KioskState
from shelfsight.edge_app.web.service import KioskService

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_K = 50
MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an upload of the largest allowed size

MESSAGES = {
    "starting": "Show a product to the camera",
    "empty": "Show a product to the camera",
    "unknown": "Not recognised — try turning the product",
    "product": "",
}


def from_this_machine() -> bool:
    """The request came over loopback: the kiosk's own screen (no staff login exists yet)."""
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def same_origin() -> bool:
    """No cross-site page made the browser send this (Origin, when given, is this server)."""
    origin = request.headers.get("Origin")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return False
    return origin is None or origin == request.host_url.rstrip("/")


def _error(status: int, reason: str) -> tuple[Response, int]:
    return jsonify({"error": reason}), status


def _candidate_rows(kiosk: KioskService, candidates: Any, k: int) -> list[dict[str, Any]]:
    rows = []
    for c in list(candidates)[:k]:
        data = kiosk.product_info(c.product_id)
        rows.append({**data, **c.to_dict()})
    return rows


def state_payload(kiosk: KioskService, state: KioskState) -> dict[str, Any]:
    ann = state.announcement
    rec = ann.recognition
    payload: dict[str, Any] = {
        "decision": ann.decision,
        "message": MESSAGES.get(ann.decision, ""),
        "product": None,
        "confidence": 0.0,
        "alternatives": [],
        "votes": ann.votes,
        "window": ann.window,
        "frame_index": state.frame_index,
        "fps": round(kiosk.recognition_rate.rate, 2),
        "camera": kiosk.camera_status(),
        "frame": state.frame.to_dict() if state.frame is not None else None,
    }
    if rec is not None and ann.decision == "product":
        payload["product"] = rec.product
        payload["confidence"] = round(rec.confidence, 4)
        payload["alternatives"] = [c.to_dict() for c in rec.alternatives]
    elif rec is not None and ann.decision == "unknown":
        payload["alternatives"] = [c.to_dict() for c in rec.alternatives[:3]]
    return payload


TEACH_TEXT_FIELDS = ("description", "category")
# Longest text each teach field takes (characters): a clerk types a name, not a document.
TEXT_LIMITS = {"product_id": 200, "name": 200, "description": 2000, "category": 100}


def printable(value: Any, key: str) -> str:
    """`value` stripped, if it is text a person could type: bounded, no control or lone surrogate code points."""
    if not isinstance(value, str):
        raise InputError(f"{key} must be text")
    limit = TEXT_LIMITS[key]
    if len(value) > limit:
        raise InputError(f"{key} is longer than {limit} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise InputError(f"{key} may hold only printable characters")
    return value.strip()


def teach_fields(form: Any) -> tuple[str, str, dict[str, Any]]:
    """(product_id, name, optional fields) from a JSON object or a form; InputError names what is wrong."""
    if not isinstance(form, dict):
        raise InputError("send a JSON object or a form with product_id and name")
    product_id, name = form.get("product_id"), form.get("name")
    if not isinstance(product_id, str) or not product_id.strip():
        raise InputError("product_id is required")
    if not isinstance(name, str) or not name.strip():
        raise InputError("name is required")
    printable(product_id, "product_id")  # the catalog's own id check follows in teach; it keeps the spaces rule
    name = printable(name, "name")
    fields: dict[str, Any] = {}
    for key in TEACH_TEXT_FIELDS:
        value = form.get(key)
        if value not in (None, ""):
            fields[key] = printable(value, key)
    price = form.get("price")
    if price not in (None, ""):
        try:
            fields["price"] = float(price)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError("price must be a number") from exc
        if not 0 <= fields["price"] < 1e9:
            raise InputError("price must be between 0 and 1e9")
    if form.get("add_to_existing") in (True, "true", "on", "1"):
        fields["add_to_existing"] = True
    unknown = set(form) - {"product_id", "name", "price", "add_to_existing", *TEACH_TEXT_FIELDS}
    if unknown:
        shown = ", ".join(sorted(str(k)[:40].encode("ascii", "backslashreplace").decode() for k in unknown)[:10])
        raise InputError(f"unknown fields: {shown}")
    return product_id, name, fields


def create_app(
    kiosk: KioskService,
    max_upload_bytes: int = 8 * 1024 * 1024,
    *,
    currency: str | None = None,
    locale: str | None = None,
    max_image_pixels: int = 25_000_000,
    decode_slots: int = 2,
    search_slots: int = 4,
) -> Flask:
    """The kiosk's web app; `currency` (ISO 4217) and `locale` (BCP 47) only change how the page shows prices.

    Uploads over `max_image_pixels` (by their header) get 413 without being decoded, and at most
    `decode_slots` uploads are decoded at once. At most `search_slots` searches are admitted
    (running or waiting for the pipeline); one more gets 429 with Retry-After at once, so a burst
    of uploads cannot pile up behind the camera's use of the pipeline.
    """
    app = Flask(__name__, static_folder=None)
    decoder = BoundedDecoder(max_image_pixels, decode_slots)
    admitted = threading.BoundedSemaphore(search_slots)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    display = {"currency": currency, "locale": locale}

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        reason = exc.description or exc.name
        if exc.code == 413:
            reason = f"upload too large (limit {max_upload_bytes} bytes)"
        return _error(exc.code or 500, reason)

    @app.get("/")
    def index() -> Response:
        return send_from_directory(STATIC_DIR, "index.html", max_age=0)

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC_DIR, name, max_age=0)

    @app.get("/api/display")
    def api_display() -> Response:
        return jsonify(display)

    @app.before_request
    def camera_feed_and_teaching_stay_local() -> tuple[Response, int] | None:
        if request.path in ("/api/state", "/api/frame.jpg", "/api/teach") and not from_this_machine():
            return _error(403, "only the kiosk's own screen may do this")
        if request.method == "POST" and request.path == "/api/teach" and not same_origin():
            return _error(403, "cross-origin request refused")
        return None

    @app.get("/api/state")
    def api_state() -> Response:
        return jsonify(state_payload(kiosk, kiosk.state()))

    @app.get("/api/frame.jpg")
    def api_frame() -> Response | tuple[Response, int]:
        data = kiosk.frame_jpeg()
        if data is None:
            return _error(404, "no camera frame yet")
        return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/api/thumbnail/<product_id>")
    def api_thumbnail(product_id: str) -> Response | tuple[Response, int]:
        try:
            data = kiosk.thumbnail(product_id)
        except ShelfsightError as exc:
            return _error(404, str(exc))
        if not data:
            return _error(404, f"product {product_id!r} has no thumbnail")
        mimetype = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        return Response(data, mimetype=mimetype, headers={"Cache-Control": "max-age=60"})

    @app.post("/search")
    def search() -> Response | tuple[Response, int]:
        if not admitted.acquire(blocking=False):
            response, status = _error(429, "the kiosk is busy; retry in a second")
            response.headers["Retry-After"] = "1"
            return response, status
        try:
            return run_search()
        finally:
            admitted.release()

    def run_search() -> Response | tuple[Response, int]:
        upload = request.files.get("image")
        data = upload.read() if upload is not None else request.get_data(cache=False)
        given = (upload.filename if upload is not None else "") or "upload"
        name = given[:100].encode("ascii", "backslashreplace").decode()  # echoed back: bounded, no raw controls
        if not data:
            return _error(400, f"{name}: empty upload (0 bytes); send an image as the 'image' form field or the body")
        try:
            k = max(1, min(MAX_K, int(request.args.get("k", 5))))
        except ValueError:
            return _error(400, "k must be an integer")
        try:
            rgb = decoder.decode(data, name)
        except ImageTooLarge as exc:
            return _error(413, str(exc))
        except ImageError as exc:
            return _error(400, str(exc))
        try:
            result = kiosk.search(rgb)
        except ShelfsightError as exc:
            return _error(422, str(exc))
        return jsonify(
            {
                "decision": result.decision,
                "confidence": round(result.confidence, 4),
                "results": _candidate_rows(kiosk, result.candidates, k),
                "threshold": round(result.threshold, 4),
                "timings_ms": {key: round(v, 3) for key, v in result.timings.items()},
            }
        )

    @app.post("/api/teach")
    def api_teach() -> tuple[Response, int]:
        form = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        try:
            product_id, name, fields = teach_fields(form)
            taught = kiosk.teach(product_id, name, **fields)
        except (InputError, ImageError) as exc:
            return _error(400, str(exc))
        except ShelfsightError as exc:
            return _error(422, str(exc))
        return jsonify(taught.to_dict()), 201

    @app.get("/health")
    def health() -> Response:
        return jsonify(kiosk.health())

    return app


class WebServer:
    """The Flask app on waitress in a background thread (port 0 picks a free port).

    waitress reads each request completely on its event loop before a worker thread runs the
    app, so slow or unfinished requests hold a connection, never a thread; idle connections
    close after `connection_timeout_s`; bodies over `max_body_bytes` (chunked too) get 413;
    malformed request lines get 400. Pure Python, so it installs on any Pi.
    """

    def __init__(
        self,
        app: Flask,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        threads: int = 4,
        connection_timeout_s: float = 15.0,
        connection_limit: int = 100,
        max_body_bytes: int = 8 * 1024 * 1024 + MULTIPART_SLACK,
    ) -> None:
        self._server = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            channel_timeout=connection_timeout_s,
            cleanup_interval=max(1.0, connection_timeout_s / 4),
            connection_limit=connection_limit,
            max_request_body_size=max_body_bytes,
            expose_tracebacks=False,
            ident="shelfsight",
        )
        self.host, self.port = host, int(self._server.effective_port)  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._server.run, name="kiosk-web", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "WebServer":
        self._thread.start()
        log.info("kiosk page at %s", self.url)
        return self

    def stop(self) -> None:
        server: Any = self._server
        server.close()
        server.task_dispatcher.shutdown()
        for channel in list(server._map.values()):  # open connections; the loop ends when none is left
            channel.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
