"""The console's HTTP API and page.

    GET  /                                 the console page (static HTML + JS + CSS from this package)
    GET  /api/session                      {"csrf", "login_required", "logged_in"}
    POST /api/login                        {"credential"} -> a session cookie (only when a credential is set)
    GET  /api/fleet                        every kiosk's catalog version, model, last error, last seen
    GET  /api/enrollments?status=pending   products taught at stores (pending, approved, rejected, withdrawn or all)
    GET  /api/enrollments/ID/photos/N      the enrollment's Nth frame (JPEG)
    POST /api/enrollments/ID/approve       {"price"?, "description"?} -> into the master catalog
    POST /api/enrollments/ID/reject        {"note"?}
    GET  /api/products?q=NAME&limit=N      the master's products whose name contains NAME
    GET  /api/products/ID/thumbnail        a product's thumbnail (JPEG or PNG)

Everything shown came from kiosks or clerks and is treated as hostile: the page writes it with
textContent only, images go out with their checked type and nosniff, every page carries a
Content-Security-Policy of 'self'. State-changing requests need the CSRF token and the
console's own Origin (`auth`). Errors are {"error": reason} and name no server paths.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from shelfsight.catalog.hq.console.auth import LOOPBACK_NAMES, Credential, host_name, same_origin
from shelfsight.catalog.hq.console.board import FleetView, NoFleet
from shelfsight.catalog.hq.inbox import STATUSES, EnrollmentInbox, InboxEntry
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.messages import MAX_ENROLL_DESCRIPTION_CHARS, MAX_ENROLL_PRICE
from shelfsight.edge_app.core.access import is_loopback, same_token
from shelfsight.edge_app.core.errors import ConfigError, ShelfsightError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_REQUEST_BYTES = 16 * 1024  # approve/reject/login bodies are a few fields
MAX_NOTE_CHARS = 500
MAX_DESCRIPTION_CHARS = MAX_ENROLL_DESCRIPTION_CHARS  # what a kiosk may send, HQ may type
MAX_QUERY_CHARS = 200
DEFAULT_PRODUCTS, MAX_PRODUCTS = 100, 500
# Each row reads its payload (up to 1 MB with its frames); the oldest come first, the total is shown.
MAX_ENROLLMENTS = 50
SESSION_COOKIE = "shelfsight_console"
CSP = "default-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class Refused(Exception):
    """A request the console answers with `status` and `reason`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class ConsoleFiles:
    """The two files the console works on, opened for the console's lifetime."""

    master: Catalog
    inbox: EnrollmentInbox

    def public(self, exc: ShelfsightError) -> str:
        """A domain error's message without the server's folders (file names stay: HQ staff know them)."""
        text = str(exc)
        for path in (self.master.path, self.inbox.path):
            if path is not None:
                text = text.replace(str(path), Path(path).name)
        return text


def _image_type(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def _image(data: bytes | None, what: str) -> Response:
    kind = _image_type(data or b"")
    if data is None or kind is None:
        raise Refused(404, f"{what} has no image")
    return Response(data, mimetype=kind, headers={"Cache-Control": "private, max-age=60"})


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True) if request.content_length else {}
    if not isinstance(body, dict):
        raise Refused(400, "send a JSON object")
    return body


def _text(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused(400, f"{key} must be text")
    value = value.strip()
    if len(value) > limit:
        raise Refused(400, f"{key} is over {limit} characters")
    return value


def _price(body: dict[str, Any]) -> float | None:
    value = body.get("price")
    if value in (None, ""):
        return None
    try:
        price = float(value)
    except (TypeError, ValueError) as exc:
        raise Refused(400, "price must be a number") from exc
    if not 0 <= price < MAX_ENROLL_PRICE:
        raise Refused(400, f"price must be between 0 and {MAX_ENROLL_PRICE:g}")
    return price


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise Refused(400, f"unknown fields: {', '.join(sorted(unknown)[:5])}")


def enrollment_row(files: ConsoleFiles, entry: InboxEntry) -> dict[str, Any]:
    """One inbox entry for the page: what the clerk typed, its photos' count, where it stands."""
    enrollment = files.inbox.enrollment(entry.id)
    return {
        "id": entry.id,
        "kiosk_id": entry.kiosk_id,
        "product_id": entry.product_id,
        "name": entry.name,
        "category": entry.category,
        "price": entry.price,
        "description": entry.description,
        "photos": sum(1 for f in enrollment.frames if f.image_jpeg),
        "frames": entry.frames,
        "received": entry.received,
        "status": entry.status,
        "note": entry.note,
    }


def fleet_payload(fleet: FleetView, master_version: int, now: float) -> dict[str, Any]:
    statuses, problems = fleet.statuses()
    kiosks = [
        {
            "kiosk_id": s.kiosk_id,
            "state": s.state,
            "catalog_version": s.catalog_version,
            "behind": None if s.catalog_version is None else max(0, master_version - s.catalog_version),
            "model": s.model_fingerprint,
            "fps": s.fps,
            "last_error": s.last_error,
            "last_seen": s.updated or None,
            "seen_s_ago": round(max(0.0, now - s.updated), 1) if s.updated else None,
        }
        for s in statuses
    ]
    return {"master_version": master_version, "kiosks": kiosks, "problems": problems}


def create_console(
    files: ConsoleFiles,
    fleet: FleetView | None = None,
    *,
    credential: Credential | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """The console app. Without `credential` it answers only requests whose Host names loopback."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    fleet = fleet or NoFleet()
    csrf = secrets.token_urlsafe(32)
    sessions: set[str] = set()
    sessions_lock = threading.Lock()
    # One approval at a time: two clicks on the same entry must not both fold it in.
    write_lock = threading.Lock()

    def logged_in() -> bool:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        with sessions_lock:
            return credential is None or any(same_token(cookie, s) for s in sessions)

    @app.errorhandler(Refused)
    def refused(exc: Refused) -> tuple[Response, int]:
        return jsonify({"error": exc.reason}), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        reason = exc.description or exc.name
        if exc.code == 413:
            reason = f"request too large (limit {MAX_REQUEST_BYTES} bytes)"
        return jsonify({"error": reason}), exc.code or 500

    @app.before_request
    def guard() -> None:
        if credential is None and host_name(request.host) not in LOOPBACK_NAMES:
            raise Refused(403, "this console answers only on localhost")
        if request.method not in ("GET", "HEAD"):
            if (request.content_length or 0) > MAX_REQUEST_BYTES:
                raise Refused(413, f"request too large (limit {MAX_REQUEST_BYTES} bytes)")
            if not same_origin(request.headers.get("Origin"), request.host):
                raise Refused(403, "cross-origin request refused")
            if request.endpoint != "login" and not same_token(request.headers.get("X-CSRF-Token"), csrf):
                raise Refused(403, "missing or wrong CSRF token; reload the page")
        public = request.endpoint in ("index", "static_file", "session", "login")
        if not public and not logged_in():
            raise Refused(401, "log in first")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.path.startswith("/api/") and "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index() -> Response:
        return send_from_directory(STATIC_DIR, "index.html", max_age=0)

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC_DIR, name, max_age=0)

    @app.get("/api/session")
    def session() -> Response:
        return jsonify({"csrf": csrf, "login_required": credential is not None, "logged_in": logged_in()})

    @app.post("/api/login")
    def login() -> Response:
        body = _json_body()
        if credential is None:
            raise Refused(400, "this console has no credential to log in with")
        if not credential.check(body.get("credential")):
            log.warning("console: a wrong credential from %s", request.remote_addr)
            raise Refused(403, "wrong credential")
        token = secrets.token_urlsafe(32)
        with sessions_lock:
            sessions.add(token)
        response = jsonify({"logged_in": True})
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict")
        return response

    @app.get("/api/fleet")
    def api_fleet() -> Response:
        return jsonify(fleet_payload(fleet, files.master.version, clock()))

    @app.get("/api/enrollments")
    def api_enrollments() -> Response:
        status = request.args.get("status", "pending")
        if status not in (*STATUSES, "all"):
            raise Refused(400, f"status must be one of {', '.join(STATUSES)} or all")
        entries = files.inbox.entries(None if status == "all" else status)
        rows = [enrollment_row(files, e) for e in entries[:MAX_ENROLLMENTS]]
        return jsonify({"total": len(entries), "enrollments": rows})

    @app.get("/api/enrollments/<int:entry_id>/photos/<int:index>")
    def api_photo(entry_id: int, index: int) -> Response:
        try:
            frames = [f for f in files.inbox.enrollment(entry_id).frames if f.image_jpeg]
        except ShelfsightError as exc:
            raise Refused(404, files.public(exc)) from exc
        if not 0 <= index < len(frames):
            raise Refused(404, f"enrollment #{entry_id} has no photo {index}")
        try:
            data = base64.b64decode(frames[index].image_jpeg or "", validate=True)
        except (binascii.Error, ValueError):
            data = b""
        return _image(data, f"enrollment #{entry_id} photo {index}")

    @app.post("/api/enrollments/<int:entry_id>/approve")
    def api_approve(entry_id: int) -> Response:
        body = _json_body()
        _check_fields(body, {"price", "description"})
        # Checked before anything is folded in, so a bad price cannot leave a half-done approval.
        price, description = _price(body), _text(body, "description", MAX_DESCRIPTION_CHARS)
        with write_lock:
            try:
                # An empty field keeps what the clerk typed (for a new product) or the master's value.
                version = files.inbox.approve(entry_id, files.master, price=price, description=description or None)
            except ShelfsightError as exc:
                raise Refused(409, files.public(exc)) from exc
        log.info("console: enrollment #%d approved, master at v%d", entry_id, version)
        return jsonify({"id": entry_id, "status": "approved", "master_version": version})

    @app.post("/api/enrollments/<int:entry_id>/reject")
    def api_reject(entry_id: int) -> Response:
        body = _json_body()
        _check_fields(body, {"note"})
        note = _text(body, "note", MAX_NOTE_CHARS) or ""
        with write_lock:
            try:
                files.inbox.reject(entry_id, note)
            except ShelfsightError as exc:
                raise Refused(409, files.public(exc)) from exc
        log.info("console: enrollment #%d rejected", entry_id)
        return jsonify({"id": entry_id, "status": "rejected"})

    @app.get("/api/products")
    def api_products() -> Response:
        query = request.args.get("q", "").strip()
        if len(query) > MAX_QUERY_CHARS:
            raise Refused(400, f"q is over {MAX_QUERY_CHARS} characters")
        try:
            limit = int(request.args.get("limit", DEFAULT_PRODUCTS))
        except ValueError as exc:
            raise Refused(400, "limit must be an integer") from exc
        if not 1 <= limit <= MAX_PRODUCTS:
            raise Refused(400, f"limit must be between 1 and {MAX_PRODUCTS}")
        needle = query.casefold()
        found = [p for p in files.master.products() if needle in p["name"].casefold()]
        rows = [
            {
                "id": p["id"],
                "name": p["name"],
                "category": p["category"],
                "price": p["price"],
                "description": p["description"],
                "references": len(p["references"]),
                "local": p["local"],
            }
            for p in found[:limit]
        ]
        return jsonify({"total": len(found), "products": rows, "master_version": files.master.version})

    @app.get("/api/products/<path:product_id>/thumbnail")
    def api_thumbnail(product_id: str) -> Response:
        try:
            data = files.master.thumbnail(product_id)
        except ShelfsightError as exc:
            raise Refused(404, files.public(exc)) from exc
        return _image(data, f"product {product_id!r}")

    return app


def check_bind(host: str, credential: Credential | None) -> None:
    """A console reachable from other machines must ask for a credential."""
    if credential is None and not is_loopback(host):
        raise ConfigError(
            f"binding the console to {host} makes it reachable from the network; set a credential "
            "(--credential-env) or bind to 127.0.0.1"
        )


class _QuietHandler(WSGIRequestHandler):
    """Request lines at debug level: the page polls the fleet every few seconds."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s %s", self.command, self.path, code)


class ConsoleServer:
    """The console app on a werkzeug server in a background thread (port 0 picks a free port)."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 8090) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.host, self.port = host, int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hq-console", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "ConsoleServer":
        self._thread.start()
        log.info("HQ console at %s", self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "ConsoleServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
