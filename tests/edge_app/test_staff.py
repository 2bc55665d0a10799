"""Staff mode over real HTTP: only a logged-in staff session, from the page's own origin, can teach or watch.

Issue 13 item 1: an anonymous request, a page on another origin, a remote device without a
session and a PIN guesser all get refused, and nothing is stored.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import ConfigError
from shelfsight.edge_app.demo.samples import SampleSet
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.kiosk.cli import kiosk_command
from shelfsight.edge_app.kiosk.config import load_config, parse_config
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.web.app import MAX_FORM_BYTES, TEACHES_PER_MINUTE, WebServer, create_app
from shelfsight.edge_app.web.auth import Sessions, StaffCredential
from tests.support.browser import artifact_dir, chromium_page
from tests.support.staff import PIN, staff_credential
from tests.support.teaching import show, views_of

TAUGHT = "taught-by-staff"


class Clock:
    """Time the test moves on by hand, for session expiry and rate-limit windows."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def catalog(tmp_path: Path, sample_catalog: Any) -> Iterator[Catalog]:
    """This test's own copy of the sample catalog: teaching writes to it."""
    with Catalog(tmp_path / "store.db") as catalog:
        catalog.replace_with_snapshot(json.loads(json.dumps(sample_catalog.export_snapshot())))
        yield catalog


@pytest.fixture()
def kiosk(catalog: Catalog, embedder: Embedder, full_config: RecognitionConfig, sample_set: SampleSet) -> Kiosk:
    kiosk = Kiosk(Recognizer(embedder, catalog, full_config))
    show(kiosk, views_of(sample_set, catalog.products()[0]["id"])[:2])  # frames a teach can use
    return kiosk


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def server(kiosk: Kiosk, tmp_path: Path, clock: Clock) -> Iterator[WebServer]:
    app = create_app(kiosk, staff=staff_credential(tmp_path), clock=clock)
    with WebServer(app, "0.0.0.0", 0) as running:
        yield running


class Browser:
    """One HTTP client of the kiosk (its own cookie), from `address`."""

    def __init__(self, server: WebServer, address: str = "127.0.0.1") -> None:
        self.host = f"{address}:{server.port}"
        self.address, self.port = address, server.port
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        sent = {"Host": self.host, **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.cookie:
            sent["Cookie"] = self.cookie
        conn = http.client.HTTPConnection(self.address, self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        parsed = json.loads(raw) if got.get("content-type") == "application/json" else raw
        return response.status, got, parsed

    def log_in(self, pin: str = PIN) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.request("POST", "/api/staff/login", {"pin": pin})
        if status == 200:
            self.cookie = headers["set-cookie"].split(";")[0]
            self.csrf = body["csrf_token"]
        return status, headers, body

    def teach(self, form: dict[str, Any], csrf: bool = True, **headers: str) -> tuple[int, dict[str, str], Any]:
        if csrf and self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        return self.request("POST", "/api/teach", form, headers)


def network_address() -> str:
    """This machine's address on a network interface (not loopback), or skip."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP connect only picks the route; nothing is sent
        except OSError:
            pytest.skip("no network interface besides loopback")
        address: str = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no network interface besides loopback")
    return address


# The camera shows a catalog product here, so teaching it under a new id needs the lookalike confirmation.
FORM = {"product_id": TAUGHT, "name": "Taught by staff", "confirm_similar": True}


def test_an_anonymous_teach_is_refused_and_nothing_is_stored(server: WebServer, catalog: Catalog) -> None:
    before = catalog.products()
    status, _, body = Browser(server).teach(FORM)
    assert status == 401 and body == {"error": "staff login required"}
    assert catalog.products() == before


def test_wrong_pins_get_401_and_the_sixth_in_a_minute_429(server: WebServer, clock: Clock) -> None:
    guesser = Browser(server)
    for _ in range(5):
        assert guesser.log_in("000000")[0] == 401
    status, headers, _ = guesser.log_in(PIN)  # even the right PIN: the client is locked out for now
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
    clock.now += 61
    assert guesser.log_in(PIN)[0] == 200


def test_a_session_teaches_only_with_its_csrf_token_and_from_its_own_origin(
    server: WebServer, catalog: Catalog
) -> None:
    staff = Browser(server)
    status, headers, body = staff.log_in()
    assert status == 200 and body["csrf_token"]
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert staff.teach(FORM, csrf=False)[0] == 403
    assert staff.teach(FORM, csrf=False, **{"X-CSRF-Token": "guessed"})[0] == 403
    crossed = staff.teach(FORM, Origin="http://evil.example")
    assert crossed[0] == 403 and "cross-origin" in crossed[2]["error"]
    assert TAUGHT not in {p["id"] for p in catalog.products()}
    status, _, taught = staff.teach(FORM, Origin=f"http://{staff.host}")
    assert status == 201 and taught["product_id"] == TAUGHT
    assert catalog.product(TAUGHT)["name"] == "Taught by staff"
    assert staff.request("POST", "/api/staff/logout", headers={"X-CSRF-Token": staff.csrf or ""})[0] == 200
    assert staff.teach({**FORM, "product_id": "after-logout"})[0] == 401


def test_a_session_ends_when_idle(server: WebServer, clock: Clock) -> None:
    staff = Browser(server)
    staff.log_in()
    clock.now += 901
    assert staff.teach(FORM)[0] == 401


def test_teach_is_rate_limited_and_its_body_bounded(server: WebServer) -> None:
    staff = Browser(server)
    staff.log_in()
    for _ in range(TEACHES_PER_MINUTE):  # refused teaches count too: each one is work for the kiosk
        assert staff.teach({"product_id": "no-name"})[0] == 400
    status, headers, _ = staff.teach(FORM)
    assert status == 429 and int(headers["retry-after"]) >= 1
    other = Browser(server)
    other.log_in()
    big = {**FORM, "description": "d" * (MAX_FORM_BYTES + 1)}
    assert other.teach(big)[0] == 413


def test_a_remote_device_sees_the_camera_feed_only_with_a_session(server: WebServer) -> None:
    remote = Browser(server, network_address())
    for path in ("/api/state", "/api/frame.jpg"):
        assert remote.request("GET", path)[0] == 403
    assert remote.request("GET", "/health")[0] == 200  # the API itself stays open
    local = Browser(server)
    assert local.request("GET", "/api/state")[0] == 200  # the kiosk's own screen needs no login
    assert remote.log_in()[0] == 200
    assert remote.request("GET", "/api/state")[0] == 200
    assert remote.request("GET", "/api/frame.jpg")[0] in (200, 404)  # 404: no camera running in this test


def test_a_rebound_name_on_loopback_does_not_get_the_camera_feed(server: WebServer) -> None:
    """A DNS-rebinding page in the kiosk's own browser comes over loopback, but with its own Host."""
    local = Browser(server)
    assert local.request("GET", "/api/state")[0] == 200
    assert local.request("GET", "/api/state", headers={"Host": f"evil.example:{server.port}"})[0] == 403


def test_binding_the_network_needs_a_staff_credential(tmp_path: Path) -> None:
    base = {"catalog": {"path": "catalog.db"}, "camera": {"type": "opencv"}}
    with pytest.raises(ConfigError, match="web.staff_credential must be set"):
        parse_config({**base, "web": {"host": "0.0.0.0"}})
    assert parse_config({**base, "web": {"host": "127.0.0.1"}}).web.staff_credential is None
    config = parse_config({**base, "web": {"host": "0.0.0.0", "staff_credential": "staff.pin"}}, base_dir=tmp_path)
    assert config.web.staff_credential == tmp_path / "staff.pin"


def test_set_staff_pin_writes_a_private_hash_that_verifies(tmp_path: Path) -> None:
    config = tmp_path / "kiosk.toml"
    config.write_text(
        '[catalog]\npath = "catalog.db"\n[camera]\ntype = "opencv"\n'
        '[web]\nhost = "0.0.0.0"\nstaff_credential = "secret/staff.pin"\n'
    )
    runner = CliRunner()
    typed = runner.invoke(kiosk_command, ["set-staff-pin", "--config", str(config)], input="135791\n135791\n")
    assert typed.exit_code == 0, typed.output
    target = load_config(config).web.staff_credential
    assert target is not None and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert "135791" not in target.read_text()
    assert StaffCredential.load(target).check("135791") and not StaffCredential.load(target).check("135790")

    piped = runner.invoke(
        kiosk_command, ["set-staff-pin", "--config", str(config), "--pin-file", "-"], input="24680x\n"
    )
    assert piped.exit_code == 0 and StaffCredential.load(target).check("24680x")
    short = runner.invoke(kiosk_command, ["set-staff-pin", "--config", str(config), "--pin-file", "-"], input="123\n")
    assert short.exit_code == 1 and "6 to 256 characters" in short.output
    assert StaffCredential.load(target).check("24680x")  # the old PIN still stands


def test_a_tampered_credential_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "staff.pin"
    path.write_text("scrypt:1073741824:8:1:" + "00" * 16 + ":" + "00" * 32 + "\n")  # would need 1 TiB
    with pytest.raises(ConfigError, match="not a staff credential"):
        StaffCredential.load(path)
    with pytest.raises(ConfigError, match="set-staff-pin"):
        StaffCredential.load(tmp_path / "missing.pin")


def test_page_staff_flow_in_headless_chromium(server: WebServer, catalog: Catalog) -> None:
    with chromium_page() as page:
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("body[data-decision]")
        assert page.is_hidden("#teach")  # the shopper's screen
        page.click("#staff-button")
        page.fill("#staff-pin", "999999")
        page.click("#staff-login button[type=submit]")
        page.wait_for_selector("#staff-status:has-text('wrong PIN')")
        assert page.is_hidden("#teach")
        page.fill("#staff-pin", PIN)
        page.click("#staff-login button[type=submit]")
        page.wait_for_selector("#teach", state="visible")
        page.fill("#teach input[name=product_id]", TAUGHT)
        page.fill("#teach input[name=name]", "Taught in Chromium")
        page.screenshot(path=str(artifact_dir("kiosk") / "staff-mode.png"))
        page.click("#teach button[type=submit]")
        # The camera showed a catalog product: the page asks before a lookalike is saved under a new id.
        lookalike = catalog.products()[0]["name"]
        page.wait_for_selector(f"#similar-text:has-text('This looks like {lookalike}. Save anyway?')")
        assert TAUGHT not in {p["id"] for p in catalog.products()}
        page.click("#similar-save")
        page.wait_for_selector(f"#teach-status:has-text('Saved {TAUGHT}')")
        assert catalog.product(TAUGHT)["name"] == "Taught in Chromium"
        page.click("#teach-undo")  # offered right after the teach
        page.wait_for_selector(f"#teach-status:has-text('Undone: {TAUGHT}')")
        assert TAUGHT not in {p["id"] for p in catalog.products()}
        page.click("#staff-logout")
        page.wait_for_selector("#teach", state="hidden")


def test_validate_config_reports_a_missing_staff_credential(tmp_path: Path) -> None:
    config = tmp_path / "kiosk.toml"
    config.write_text(
        '[catalog]\npath = "catalog.db"\n[camera]\ntype = "opencv"\n'
        '[web]\nhost = "0.0.0.0"\nstaff_credential = "staff.pin"\n'
    )
    result = CliRunner().invoke(kiosk_command, ["--config", str(config), "--validate-config"])
    assert result.exit_code == 1 and "web.staff_credential:" in result.output and "set-staff-pin" in result.output


def test_sessions_are_bounded_and_the_least_recently_used_goes_first(clock: Clock) -> None:
    sessions = Sessions(max_sessions=2, clock=clock)
    first, _ = sessions.open()
    second, _ = sessions.open()
    assert sessions.get(first) is not None  # used: now the most recent
    sessions.open()
    assert sessions.get(second) is None and sessions.get(first) is not None
