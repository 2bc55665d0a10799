"""HTTP API and the kiosk page. The API is described in openapi.json (served at /api/openapi.json,
checked against real responses by tests/edge_app/test_openapi.py) and in docs/api.md.

    GET  /                      the shopper's screen (static HTML + JS + CSS from this package)
    GET  /api/state             what the screen shows: the announced product, alternatives, health
    GET  /api/frame.jpg         the latest camera frame with the region of interest drawn
    GET  /api/thumbnail/ID      a product's picture
    GET  /api/products/CODE     a product card by id or barcode (a barcode scanner's fallback)
    POST /search                an image (multipart field "image", or the raw body) -> ranked products
    GET  /api/events            announcement events as Server-Sent Events
    POST /api/teach             staff: teach the product the camera just saw
    POST /api/teach/undo        staff: take back the latest teach of a product
    POST /api/staff/login       {"pin"} -> {"csrf_token"} and the staff session cookie
    POST /api/staff/logout      ends the session
    GET  /health                200 when everything works, 503 with the reasons when a part is down
    GET  /metrics               Prometheus text format

Staff mode (see auth.py): staff POSTs need a staff session and its CSRF token in `X-CSRF-Token`,
and must come from this page's own origin. The camera feed (/api/state, /api/frame.jpg) is served
to the kiosk's own screen (loopback) and to staff sessions. Read-only endpoints answer the origins
in `cors_origins` (a POS page elsewhere). Every error is JSON {"error": reason} naming the problem;
internals (paths, tracebacks, reprs) stay in the kiosk's log.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory
from waitress.server import create_server
from werkzeug.exceptions import HTTPException

from shelfsight.edge_app.core.access import is_loopback, same_token
from shelfsight.edge_app.core.errors import (
    ImageError,
    InputError,
    NothingToUndo,
    ShelfsightError,
    SimilarProductError,
)
from shelfsight.edge_app.core.images import BoundedDecoder, ImageTooLarge
from shelfsight.edge_app.recognition.events import product_card
from shelfsight.edge_app.web.auth import Clock, RateLimit, Sessions, StaffCredential
from shelfsight.edge_app.web.config import WebConfig
from shelfsight.edge_app.web.forms import printable, refuse_unknown, search_parameters, shown, teach_fields
from shelfsight.edge_app.web.metrics import KioskMetrics
from shelfsight.edge_app.web.payloads import API_VERSION, search_payload, state_payload
from shelfsight.edge_app.web.service import KioskService
from shelfsight.edge_app.web.streams import EventStreams

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI = Path(__file__).resolve().parent / "openapi.json"
MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an upload of the largest allowed size
SESSION_COOKIE = "shelfsight_staff"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_FAILURES_PER_MINUTE = 5
TEACHES_PER_MINUTE = 10
# The largest teach or login request: its text fields at their limits, 4 UTF-8 bytes each, and form overhead.
MAX_FORM_BYTES = 16 * 1024
CAMERA_FEED = ("/api/state", "/api/frame.jpg")
# What another origin's page may read (cors_origins): the integrator's API, never the staff or camera endpoints.
CORS_PATHS = ("/search", "/api/products/", "/api/events", "/api/openapi.json", "/api/thumbnail/", "/health")
STREAMS_KEY = "shelfsight.streams"
LOOKUP_SLOTS = 2  # product lookups at once (a barcode scanner sends one at a time)


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


def _error(status: int, reason: str, retry_after: int | None = None, **extra: Any) -> tuple[Response, int]:
    response = jsonify({"error": reason, **extra})
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response, status


def _cors_path(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in CORS_PATHS)


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
    lookups = threading.BoundedSemaphore(LOOKUP_SLOTS)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    display = {"currency": config.currency, "locale": config.locale, "language": config.language}
    sessions = Sessions(idle_s=staff_idle_s, clock=clock)
    failed_logins = RateLimit(LOGIN_FAILURES_PER_MINUTE, clock=clock)
    teaches = RateLimit(TEACHES_PER_MINUTE, clock=clock)
    metrics = KioskMetrics(kiosk)
    kiosk.add_listener(metrics.observe)
    kiosk.events.subscribe(metrics.announced)
    streams = EventStreams(kiosk.events, config.event_streams)
    app.extensions[STREAMS_KEY] = streams  # WebServer.stop ends open streams
    cors_origins = frozenset(config.cors_origins)

    def staff_session() -> tuple[str, Any] | None:
        token = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(token)
        return (token, session) if token and session is not None else None

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        reason = exc.description or exc.name
        if exc.code == 413:
            reason = f"upload too large (limit {max_upload_bytes} bytes)"
        elif exc.code == 404:
            reason = f"no such endpoint: {request.method} {shown(request.path)} (see /api/openapi.json)"
        elif exc.code == 405:
            reason = f"{request.method} is not allowed on {shown(request.path)}"
        return _error(exc.code or 500, reason)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        log.exception("%s %s failed", request.method, request.path)  # the details stay here
        return _error(500, "internal error; the kiosk's log has the details")

    @app.before_request
    def guard() -> tuple[Response, int] | Response | None:
        if request.method == "OPTIONS":
            return preflight()
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

    def preflight() -> Response | tuple[Response, int]:
        origin = request.headers.get("Origin")
        if origin not in cors_origins or not _cors_path(request.path):
            return _error(403, "this origin may not call this endpoint (web.cors_origins)")
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["API-Version"] = API_VERSION
        origin = request.headers.get("Origin")
        if origin is not None and origin in cors_origins and _cors_path(request.path):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.add("Vary", "Origin")
        return response

    @app.get("/")
    def index() -> Response:
        return send_from_directory(STATIC_DIR, "index.html", max_age=0)

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC_DIR, name, max_age=0)

    @app.get("/api/display")
    def api_display() -> Response:
        return jsonify(display)

    @app.get("/api/openapi.json")
    def api_openapi() -> Response:
        return Response(OPENAPI.read_bytes(), mimetype="application/json")

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
        return jsonify(state_payload(kiosk, kiosk.state(), kiosk.problems(), staff=staff_session() is not None))

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
        except ShelfsightError:
            return _error(404, f"no product {shown(product_id)!r}")
        if not data:
            return _error(404, f"product {shown(product_id)!r} has no thumbnail")
        mimetype = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        return Response(data, mimetype=mimetype, headers={"Cache-Control": "max-age=60"})

    @app.get("/api/products/<code>")
    def api_product(code: str) -> tuple[Response, int]:
        # An unknown code scans the products table (barcode attributes): a few at once, more get 429.
        if not lookups.acquire(blocking=False):
            return _error(429, "too many product lookups at once; retry in a second", retry_after=1)
        try:
            return product_lookup(code)
        finally:
            lookups.release()

    def product_lookup(code: str) -> tuple[Response, int]:
        try:
            code = printable(code, "code", "product_id")
            product_id = kiosk.find_product(code)
        except InputError as exc:
            return _error(400, str(exc))
        if product_id is None:
            return _error(404, f"no product with id or barcode {shown(code)!r}")
        return jsonify(product_card(kiosk.product_info(product_id))), 200

    @app.post("/search")
    def search() -> Response | tuple[Response, int]:
        if not admitted.acquire(blocking=False):
            metrics.searches.labels("429").inc()
            return _error(429, "the kiosk is busy; retry in a second", retry_after=1)
        try:
            response, status = run_search()
        finally:
            admitted.release()
        metrics.searches.labels(str(status)).inc()
        return response, status

    def run_search() -> tuple[Response, int]:
        try:
            k, filters = search_parameters(request.args.to_dict(flat=False))
        except InputError as exc:
            return _error(400, str(exc))
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("image")
            if upload is None:
                fields = sorted({*request.files, *request.form})
                got = ", ".join(repr(shown(f)) for f in fields[:5]) or "no fields"
                return _error(400, f"send the image in the form field 'image' (this form has {got})")
            data, name = upload.read(), shown(upload.filename or "image")
        else:
            data, name = request.get_data(cache=False), "upload"
        if not data:
            return _error(400, f"{name}: empty upload (0 bytes); send an image as the 'image' form field or the body")
        try:
            rgb = decoder.decode(data, name)
        except ImageTooLarge as exc:
            return _error(413, str(exc))
        except ImageError as exc:
            return _error(400, str(exc))
        try:
            result = kiosk.search(rgb, k=50 if filters else k)
        except ShelfsightError as exc:
            return _error(422, str(exc))
        return jsonify(search_payload(kiosk, result, k, filters)), 200

    @app.get("/api/events")
    def api_events() -> Response | tuple[Response, int]:
        if request.method == "HEAD":  # a probe: werkzeug would never start, nor close, a stream's body
            return Response(mimetype="text/event-stream", headers={"Cache-Control": "no-store"})
        stream = streams.open()
        if stream is None:
            return _error(
                503, f"at most {config.event_streams} event streams at once (web.event_streams)", retry_after=5
            )
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        response = Response(stream.body(), mimetype="text/event-stream", headers=headers)
        response.call_on_close(stream.close)  # also for HEAD and clients gone before the first chunk
        return response

    def staff_request(limit: RateLimit | None = None) -> tuple[dict[str, Any] | None, tuple[Response, int] | None]:
        """The JSON or form body of a staff POST, or the error answer (too large, over the rate limit)."""
        if request.content_length is None or request.content_length > MAX_FORM_BYTES:
            return None, _error(413, f"request too large (limit {MAX_FORM_BYTES} bytes)")
        if limit is not None:
            token = request.cookies.get(SESSION_COOKIE) or ""  # the guard checked it is a live session
            wait = limit.retry_after(token)
            if wait is not None:
                return None, _error(429, f"at most {TEACHES_PER_MINUTE} teaches a minute", retry_after=wait)
            limit.record(token)
        form = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        if not isinstance(form, dict):
            return None, _error(400, "send a JSON object or a form")
        return form, None

    @app.post("/api/teach")
    def api_teach() -> tuple[Response, int]:
        form, refused = staff_request(teaches)
        if refused is not None:
            return refused
        try:
            product_id, name, fields = teach_fields(form)
            taught = kiosk.teach(product_id, name, **fields)
        except SimilarProductError as exc:
            return _error(409, str(exc), similar=exc.to_dict())
        except (InputError, ImageError) as exc:
            return _error(400, str(exc))
        except ShelfsightError as exc:
            return _error(422, str(exc))
        return jsonify(taught.to_dict()), 201

    @app.post("/api/teach/undo")
    def api_undo() -> tuple[Response, int]:
        form, refused = staff_request()
        if refused is not None:
            return refused
        assert form is not None
        try:
            refuse_unknown(form, {"product_id"}, "product_id")
            undone = kiosk.undo_teach(printable(form.get("product_id"), "product_id"))
        except NothingToUndo as exc:
            return _error(404, str(exc))
        except InputError as exc:
            return _error(400, str(exc))
        except ShelfsightError as exc:
            return _error(422, str(exc))
        return jsonify(undone), 200

    @app.get("/health")
    def health() -> tuple[Response, int]:
        data = {**kiosk.health(), "api_version": API_VERSION}
        return jsonify(data), 503 if data["status"] == "down" else 200

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

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
        self._app = app
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
        streams = self._app.extensions.get(STREAMS_KEY)
        if streams is not None:
            streams.close()  # open event streams end, so their worker threads are free to shut down
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
