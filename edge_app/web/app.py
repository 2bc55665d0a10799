"""HTTP API and the kiosk page.

    GET  /                  the kiosk page (static HTML + JS + CSS from this package)
    GET  /api/state         the announced product, the latest frame's result, rates
    GET  /api/frame.jpg     the latest camera frame with the region of interest drawn
    GET  /api/thumbnail/ID  a product's thumbnail from the catalog
    POST /search            an image (multipart field "image", or the raw body) -> top-k JSON
    POST /api/teach         teach the product the camera just saw (JSON or form: product_id, name,
                            optional price, description, category) -> 201 {"product_id", "references", ...}
    GET  /health            model fingerprint, catalog version, uptime, fps
    POST /api/staff/login   {"pin"} -> 200 {"csrf_token"} and the staff session cookie
    POST /api/staff/logout  ends the session

Staff mode (see auth.py): teaching needs a staff session and its CSRF token in `X-CSRF-Token`;
every POST but /search (a read) must also come from this page's own origin. The camera feed
(/api/state, /api/frame.jpg) is served to the kiosk's own screen (loopback) and to staff sessions.

Bad uploads get a 4xx JSON body {"error": reason}: 400 for zero bytes or a
file that is not a decodable image, 413 for one over the configured size.
A refused teach request gets 400 with the reason (bad id, no name, bad price,
no usable camera frame).
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory
from waitress.server import create_server
from werkzeug.exceptions import HTTPException

from shelfsight.edge_app.core.access import is_loopback, same_token
from shelfsight.edge_app.core.errors import ImageError, InputError, ShelfsightError
from shelfsight.edge_app.core.images import BoundedDecoder, ImageTooLarge
from shelfsight.edge_app.recognition.state import KioskState
from shelfsight.edge_app.web.auth import Clock, RateLimit, Sessions, StaffCredential
from shelfsight.edge_app.web.config import WebConfig
from shelfsight.edge_app.web.service import KioskService

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_K = 50
MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an upload of the largest allowed size
SESSION_COOKIE = "shelfsight_staff"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_FAILURES_PER_MINUTE = 5
TEACHES_PER_MINUTE = 10
# The largest teach or login request: its text fields at their limits, 4 UTF-8 bytes each, and form overhead.
MAX_FORM_BYTES = 16 * 1024
CAMERA_FEED = ("/api/state", "/api/frame.jpg")

MESSAGES = {
    "starting": "Show a product to the camera",
    "empty": "Show a product to the camera",
    "unknown": "Not recognised — try turning the product",
    "product": "",
}


def from_this_machine() -> bool:
    """The kiosk's own screen: over loopback, to a loopback name (a DNS-rebinding page has its own Host)."""
    host = request.host  # "127.0.0.1:8080", "localhost", "[::1]:8080": the name without the port
    name = host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    return is_loopback(request.remote_addr or "") and is_loopback(name)


def same_origin() -> bool:
    """No cross-site page made the browser send this (Origin, when given, is this server)."""
    origin = request.headers.get("Origin")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return False
    return origin is None or origin == request.host_url.rstrip("/")


def _error(status: int, reason: str, retry_after: int | None = None) -> tuple[Response, int]:
    response = jsonify({"error": reason})
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response, status


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
    config: WebConfig | None = None,
    *,
    staff: StaffCredential | None = None,
    clock: Clock = time.monotonic,
) -> Flask:
    """The kiosk's web app, configured by the `[web]` section (`config`; default: its defaults).

    Uploads over `max_image_pixels` (by their header) get 413 without being decoded, and at most
    `decode_slots` uploads are decoded at once. At most `search_slots` searches are admitted
    (running or waiting for the pipeline); one more gets 429 with Retry-After at once, so a burst
    of uploads cannot pile up behind the camera's use of the pipeline.

    `staff` is the staff PIN's hash; without one nobody can log in, so nobody can teach.
    Sessions end after `staff_session_idle_s` unused; `clock` times sessions and rate limits.
    """
    config = config or WebConfig()
    max_upload_bytes, staff_idle_s = config.max_upload_bytes, config.staff_session_idle_s
    app = Flask(__name__, static_folder=None)
    decoder = BoundedDecoder(config.max_image_pixels, config.decode_slots)
    admitted = threading.BoundedSemaphore(config.search_slots)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    display = {"currency": config.currency, "locale": config.locale, "language": config.language}
    sessions = Sessions(idle_s=staff_idle_s, clock=clock)
    failed_logins = RateLimit(LOGIN_FAILURES_PER_MINUTE, clock=clock)
    teaches = RateLimit(TEACHES_PER_MINUTE, clock=clock)

    def staff_session() -> tuple[str, Any] | None:
        token = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(token)
        return (token, session) if token and session is not None else None

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
    def guard() -> tuple[Response, int] | None:
        if request.path in CAMERA_FEED and not (from_this_machine() or staff_session()):
            return _error(403, "the camera feed is for the kiosk's own screen and logged-in staff")
        if request.method != "POST" or request.path == "/search":  # a search reads, it changes nothing
            return None
        if not same_origin():
            return _error(403, "cross-origin request refused")
        if request.path == "/api/staff/login":
            return None
        current = staff_session()
        if current is None:
            return _error(401, "staff login required")
        if not same_token(request.headers.get(CSRF_HEADER), current[1].csrf):
            return _error(403, f"missing or wrong {CSRF_HEADER} header")
        return None

    @app.post("/api/staff/login")
    def staff_login() -> tuple[Response, int]:
        client = request.remote_addr or "?"
        wait = failed_logins.retry_after(client)
        if wait is not None:
            return _error(429, "too many wrong PINs; wait and try again", retry_after=wait)
        if staff is None:
            return _error(403, "no staff PIN is set on this kiosk (shelfsight kiosk set-staff-pin)")
        if (request.content_length or 0) > MAX_FORM_BYTES:
            return _error(413, "request too large")
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        pin = body.get("pin") if isinstance(body, dict) else None
        if not staff.check(pin):
            failed_logins.record(client)
            log.warning("wrong staff PIN from %s", client)
            return _error(401, "wrong PIN")
        token, session = sessions.open()
        response = jsonify({"csrf_token": session.csrf, "idle_timeout_s": staff_idle_s})
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response, 200

    @app.post("/api/staff/logout")
    def staff_logout() -> tuple[Response, int]:
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = jsonify({"logged_out": True})
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Strict", path="/")
        return response, 200

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
            return _error(429, "the kiosk is busy; retry in a second", retry_after=1)
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
        token = request.cookies.get(SESSION_COOKIE) or ""  # the guard checked it is a live session
        if request.content_length is None or request.content_length > MAX_FORM_BYTES:
            return _error(413, f"teach request too large (limit {MAX_FORM_BYTES} bytes)")
        wait = teaches.retry_after(token)
        if wait is not None:
            return _error(429, f"at most {TEACHES_PER_MINUTE} teaches a minute", retry_after=wait)
        teaches.record(token)
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
        threads: int = 8,
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
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kiosk-web", daemon=True)

    def _serve(self) -> None:
        # waitress's own run() loops until its sockets are gone, and closing them from another
        # thread races its select() (EBADF). One poll at a time, and `stop` closes them after.
        server: Any = self._server
        while not self._stopping.is_set():
            server.asyncore.loop(timeout=0.2, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "WebServer":
        self._thread.start()
        log.info("kiosk page at %s", self.url)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        server: Any = self._server
        for channel in list(server._map.values()):  # the listening socket and open connections
            channel.close()
        server.task_dispatcher.shutdown()

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
