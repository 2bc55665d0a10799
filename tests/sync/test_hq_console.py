"""HQ web console: the JSON API on real SQLite files and a real inbox, the fleet from a real broker,
and the page in headless Chromium (screenshots kept under build/test-artifacts/hq-console/)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from shelfsight.catalog.hq.console.app import ConsoleFiles, ConsoleServer, check_bind, create_console
from shelfsight.catalog.hq.console.auth import Credential
from shelfsight.catalog.hq.console.board import StatusBoard
from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.messages import EnrolledFrame, Enrollment, KioskStatus, Withdrawal
from shelfsight.catalog.sync.topics import Topics
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.edge_app.core.errors import ConfigError
from tests.support.broker import Broker
from tests.support.browser import artifact_dir, chromium_page
from tests.support.fakes import product_photo
from tests.support.sync import DIM, FLEET, WAIT, Tap, add_products, fingerprint_of, make_model

HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1">Jam'
ORIGIN = "http://localhost"
CLERK_DESCRIPTION = "Strawberry, 350 g <b>new</b>"


def jpeg(seed: int, size: int = 256) -> bytes:
    out = io.BytesIO()
    Image.fromarray(product_photo(seed, (size, size))).save(out, "JPEG", quality=90)
    return out.getvalue()


def taught(kiosk_id: str, product_id: str, name: str, fingerprint: str, *, photos: int = 2, **typed: Any) -> Enrollment:
    rng = np.random.default_rng(len(product_id))
    frames = [
        EnrolledFrame(
            embedding=rng.normal(size=DIM).tolist(),
            fingerprint=fingerprint,
            image_jpeg=base64.b64encode(jpeg(i)).decode() if i < photos else None,
        )
        for i in range(3)
    ]
    return Enrollment(kiosk_id=kiosk_id, product_id=product_id, name=name, category="jam", frames=frames, **typed)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[ConsoleFiles]:
    """A master with two products and an inbox with two enrollments (one with a hostile name)."""
    fingerprint = fingerprint_of(make_model(tmp_path / "model"))
    with Catalog(tmp_path / "master.db") as master, EnrollmentInbox(tmp_path / "enroll.db") as inbox:
        add_products(master, fingerprint, [1, 2])
        inbox.add(taught("k1", "jam-1", HOSTILE, fingerprint, price=2.95, description=CLERK_DESCRIPTION))
        inbox.add(taught("k2", "jam-2", "Plum jam", fingerprint, photos=0))
        yield ConsoleFiles(master, inbox)


@pytest.fixture
def client(files: ConsoleFiles) -> FlaskClient:
    return create_console(files).test_client()


def post(client: FlaskClient, path: str, body: Any = None, **headers: str) -> Any:
    """A state-changing request as the page sends it: the console's Origin and its CSRF token."""
    csrf = client.get("/api/session").json["csrf"]
    return client.post(path, json=body or {}, headers={"Origin": ORIGIN, "X-CSRF-Token": csrf, **headers})


def test_enrollments_with_photos_approved_with_price_and_description(client: FlaskClient, files: ConsoleFiles) -> None:
    [first, second] = client.get("/api/enrollments").json["enrollments"]
    assert (first["kiosk_id"], first["product_id"], first["name"], first["photos"], first["frames"]) == (
        "k1", "jam-1", HOSTILE, 2, 3,
    )  # fmt: skip
    assert (first["category"], first["price"], first["description"], first["status"]) == (
        "jam", 2.95, CLERK_DESCRIPTION, "pending",
    )  # fmt: skip
    assert (second["photos"], second["price"], second["description"]) == (0, None, "")
    photo = client.get("/api/enrollments/1/photos/1")
    assert photo.status_code == 200 and photo.mimetype == "image/jpeg"
    assert photo.headers["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(photo.data)).size == (256, 256)
    assert client.get("/api/enrollments/1/photos/2").status_code == 404  # the third frame came without a photo
    assert client.get("/api/enrollments/99/photos/0").status_code == 404

    before = files.master.version
    # HQ corrects the price; the description stays the clerk's.
    approved = post(client, "/api/enrollments/1/approve", {"price": "3.50", "description": ""})
    assert approved.status_code == 200, approved.json
    product = files.master.product("jam-1")
    assert (product["name"], product["price"], product["description"], product["category"]) == (
        HOSTILE, 3.5, CLERK_DESCRIPTION, "jam",
    )  # fmt: skip
    assert len(product["references"]) == 3 and approved.json["master_version"] == files.master.version > before
    assert [e["id"] for e in client.get("/api/enrollments").json["enrollments"]] == [2]
    thumb = client.get("/api/products/jam-1/thumbnail")  # made by the approval from the sharpest photo
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    again = post(client, "/api/enrollments/1/approve")
    assert again.status_code == 409 and "already approved" in again.json["error"]


def test_approval_without_edits_carries_what_the_clerk_typed(client: FlaskClient, files: ConsoleFiles) -> None:
    assert post(client, "/api/enrollments/1/approve").status_code == 200
    product = files.master.product("jam-1")
    assert (product["price"], product["description"]) == (2.95, CLERK_DESCRIPTION)


def test_reject_keeps_the_product_out_of_the_master(client: FlaskClient, files: ConsoleFiles) -> None:
    before = files.master.version
    response = post(client, "/api/enrollments/2/reject", {"note": "duplicate of p000001"})
    assert response.status_code == 200
    assert files.master.version == before and not files.master.products(id="jam-2")
    [entry] = [e for e in files.inbox.entries() if e.id == 2]
    assert (entry.status, entry.note) == ("rejected", "duplicate of p000001")
    missing = post(client, "/api/enrollments/77/reject")
    assert missing.status_code == 409 and "no enrollment #77" in missing.json["error"]
    assert str(files.inbox.path.parent) not in missing.json["error"]  # no server folders in errors


def withdraw_first(files: ConsoleFiles) -> None:
    """Kiosk k1's clerk undid the teach of jam-1 (entry 1; the fixture's enrollments carry created 0.0)."""
    assert files.inbox.withdraw(Withdrawal(kiosk_id="k1", product_id="jam-1", enrollment_created=0.0)) == [1]


def test_a_withdrawn_enrollment_is_listed_as_such_and_cannot_be_approved(
    client: FlaskClient, files: ConsoleFiles
) -> None:
    withdraw_first(files)
    assert [e["id"] for e in client.get("/api/enrollments").json["enrollments"]] == [2]  # pending: waits for someone
    [withdrawn] = client.get("/api/enrollments?status=withdrawn").json["enrollments"]
    assert (withdrawn["id"], withdrawn["status"], withdrawn["photos"]) == (1, "withdrawn", 2)  # photos kept
    assert "undone" in withdrawn["note"] and client.get("/api/enrollments/1/photos/1").status_code == 200
    statuses = [e["status"] for e in client.get("/api/enrollments?status=all").json["enrollments"]]
    assert statuses == ["withdrawn", "pending"]
    before = files.master.version
    for action in ("approve", "reject"):
        refused = post(client, f"/api/enrollments/1/{action}")
        assert refused.status_code == 409 and "#1 was withdrawn by its kiosk" in refused.json["error"]
    assert files.master.version == before and not files.master.products(id="jam-1")
    wrong = client.get("/api/enrollments?status=gone")
    assert wrong.status_code == 400 and "withdrawn" in wrong.json["error"]


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"price": "cheap"}, "price must be a number"),
        ({"price": -1}, "price must be between"),
        ({"description": "x" * 2001}, "over 2000 characters"),
        ({"description": 5}, "description must be text"),
        ({"thumbnail": "x"}, "unknown fields: thumbnail"),
    ],
)
def test_a_bad_approval_changes_nothing(client: FlaskClient, files: ConsoleFiles, body: Any, reason: str) -> None:
    before = files.master.version
    response = post(client, "/api/enrollments/1/approve", body)
    assert response.status_code == 400 and reason in response.json["error"]
    assert files.master.version == before and [e.status for e in files.inbox.entries()] == ["pending", "pending"]


def test_state_changes_need_the_consoles_origin_and_csrf_token(client: FlaskClient, files: ConsoleFiles) -> None:
    csrf = client.get("/api/session").json["csrf"]
    url = "/api/enrollments/1/approve"
    assert client.post(url, json={}, headers={"X-CSRF-Token": csrf}).status_code == 403  # no Origin
    evil = client.post(url, json={}, headers={"Origin": "http://evil.example", "X-CSRF-Token": csrf})
    assert evil.status_code == 403 and "cross-origin" in evil.json["error"]
    forged = client.post(url, json={}, headers={"Origin": ORIGIN, "X-CSRF-Token": "guess"})
    assert forged.status_code == 403 and "CSRF" in forged.json["error"]
    odd = client.post(url, json={}, headers={"Origin": ORIGIN, "X-CSRF-Token": "\xff\u00e9t\u00e9"})
    assert odd.status_code == 403  # not an exception from a non-ASCII header
    assert client.post(url, data="x" * 20_000, headers={"Origin": ORIGIN, "X-CSRF-Token": csrf}).status_code == 413
    assert [e.status for e in files.inbox.entries()] == ["pending", "pending"]
    # A DNS-rebinding page reaches the loopback console under its own name: refused.
    assert client.get("/api/session", headers={"Host": "evil.example:8090"}).status_code == 403


def test_page_uses_no_internet_assets_and_forbids_framing_and_inline_scripts(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b"/static/console.js" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    for name in ("index.html", "console.js", "console.css"):
        body = client.get(f"/static/{name}").data
        assert b"http:" not in body and b"https:" not in body and b"innerHTML" not in body, name
    assert client.get("/static/../app.py").status_code == 404


def test_off_loopback_the_console_needs_a_credential(files: ConsoleFiles) -> None:
    with pytest.raises(ConfigError, match="credential"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="8 to 256"):
        Credential("1234")
    client = create_console(files, credential=Credential("correct horse")).test_client()
    headers = {"Host": "hq.example:8090"}
    origin = {**headers, "Origin": "http://hq.example:8090"}
    session = client.get("/api/session", headers=headers).json
    assert session["login_required"] and not session["logged_in"]
    assert client.get("/api/enrollments", headers=headers).status_code == 401
    client.set_cookie("shelfsight_console", "\u00e9", domain="hq.example")
    assert client.get("/api/enrollments", headers=headers).status_code == 401
    assert client.get("/api/enrollments/1/photos/0", headers=headers).status_code == 401
    assert client.post("/api/login", json={"credential": "wrong horse"}, headers=origin).status_code == 403
    logged_in = client.post("/api/login", json={"credential": "correct horse"}, headers=origin)
    assert logged_in.status_code == 200
    cookie = logged_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/enrollments", headers=headers).status_code == 200


def test_products_search_and_thumbnails(client: FlaskClient, files: ConsoleFiles) -> None:
    body = client.get("/api/products").json
    assert body["total"] == 2 and [p["id"] for p in body["products"]] == ["p000001", "p000002"]
    found = client.get("/api/products?q=product 2").json
    assert [p["id"] for p in found["products"]] == ["p000002"] and found["products"][0]["references"] == 1
    assert client.get("/api/products?limit=1").json["products"][0]["id"] == "p000001"
    assert client.get("/api/products?limit=0").status_code == 400
    assert client.get("/api/products?q=" + "x" * 201).status_code == 400
    assert client.get("/api/products/p000001/thumbnail").status_code == 404
    files.master.update_product("p000001", thumbnail=jpeg(4, 96))
    thumb = client.get("/api/products/p000001/thumbnail")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert thumb.headers["X-Content-Type-Options"] == "nosniff"
    # Whatever else a thumbnail column holds is not served under an image type.
    files.master.db.execute("UPDATE products SET thumbnail = ? WHERE id = 'p000002'", [b"<html>hi</html>"])
    assert client.get("/api/products/p000002/thumbnail").status_code == 404
    assert client.get("/api/products/nope/thumbnail").status_code == 404


def status(kiosk_id: str, **fields: Any) -> bytes:
    return KioskStatus(kiosk_id=kiosk_id, updated=time.time() - 30, **fields).model_dump_json().encode()


def publish_statuses(broker: Broker, topics: Topics, fingerprint: str) -> None:
    """Two kiosks' retained statuses (one with a hostile last error) and one unreadable status."""
    tap = Tap(broker, client_id="status-writer")
    try:
        tap.inject(
            topics.status("k1"), status("k1", catalog_version=1, model_fingerprint=fingerprint, fps=9.5), retain=True
        )
        tap.inject(
            topics.status("k2"),
            status("k2", state="offline", catalog_version=0, last_error=f"camera gone {HOSTILE}"),
            retain=True,
        )
        tap.inject(topics.status("k3"), b"{not json", retain=True)
    finally:
        tap.close()


def wait_until(predicate: Any) -> None:
    deadline = time.monotonic() + WAIT  # only guards against a hang
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def test_fleet_from_the_kiosks_retained_statuses(broker: Broker, files: ConsoleFiles) -> None:
    topics = Topics("shelfsight", FLEET)
    fingerprint = files.master.model_fingerprint or ""
    publish_statuses(broker, topics, fingerprint)
    with StatusBoard(BrokerConfig(host="127.0.0.1", port=broker.port), topics) as board:
        client = create_console(files, board).test_client()
        wait_until(lambda: len(client.get("/api/fleet").json["kiosks"]) == 2)
        fleet = client.get("/api/fleet").json
    assert fleet["master_version"] == files.master.version
    k1, k2 = fleet["kiosks"]
    assert (k1["kiosk_id"], k1["state"], k1["catalog_version"], k1["model"], k1["last_error"]) == (
        "k1", "online", 1, fingerprint, None,
    )  # fmt: skip
    assert k1["behind"] == files.master.version - 1 and 29 <= k1["seen_s_ago"] < 29 + WAIT
    assert (k2["state"], k2["last_error"]) == ("offline", f"camera gone {HOSTILE}")
    [problem] = fleet["problems"]
    assert "status/k3" in problem and "malformed" in problem


# The page runs under the console's Content-Security-Policy, which forbids eval: Playwright's
# wait_for_function polls with eval, so conditions are polled from here with page.evaluate instead.
def test_console_page_in_headless_chromium(broker: Broker, files: ConsoleFiles) -> None:
    shots = artifact_dir("hq-console")
    topics = Topics("shelfsight", FLEET)
    publish_statuses(broker, topics, files.master.model_fingerprint or "")
    with (
        StatusBoard(BrokerConfig(host="127.0.0.1", port=broker.port), topics) as board,
        ConsoleServer(create_console(files, board), "127.0.0.1", 0) as server,
        chromium_page(1280, 900) as page,
    ):
        wait_until(lambda: len(board.statuses()[0]) == 2)
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.text_content('#fleet tr[data-kiosk="k1"] td:nth-child(3)') == "v1"
        assert page.text_content('#fleet tr[data-kiosk="k2"] td:nth-child(6)') == f"camera gone {HOSTILE}"
        card = page.locator('.enrollment[data-id="1"]')
        assert card.locator(".title").text_content() == f"{HOSTILE} (jam-1)"
        assert card.locator(".photos img").count() == 2
        wait_until(lambda: page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        page.screenshot(path=str(shots / "1-fleet-and-enrollments.png"), full_page=True)

        # The form starts with what the clerk typed at the kiosk; HQ corrects the price.
        assert card.locator('input[name="price"]').input_value() == "2.95"
        assert card.locator('textarea[name="description"]').input_value() == CLERK_DESCRIPTION
        card.locator('input[name="price"]').fill("3.50")
        card.locator("button.approve").click()
        page.wait_for_selector('#products tr[data-product="jam-1"]')
        page.wait_for_selector('.enrollment[data-id="1"]', state="detached")
        assert "approved" in (page.text_content("#notice") or "")
        row = page.locator('#products tr[data-product="jam-1"] td')
        assert [row.nth(i).text_content() for i in (2, 4, 5)] == [HOSTILE, "3.50", CLERK_DESCRIPTION]
        wait_until(lambda: page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        assert page.locator('#products tr[data-product="jam-1"] img.thumb').count() == 1
        wait_until(lambda: page.text_content("#master") == f"master catalog v{files.master.version}")
        page.screenshot(path=str(shots / "2-approved.png"), full_page=True)

        page.locator('.enrollment[data-id="2"] input[name="note"]').fill("duplicate")
        page.locator('.enrollment[data-id="2"] button.reject').click()
        page.wait_for_selector("#enrollments-empty:not(.hidden)")
        page.fill("#query", "plum")
        page.click('#search button[type="submit"]')
        wait_until(lambda: page.text_content("#products-count") == "0 products")
        page.screenshot(path=str(shots / "3-rejected-and-search.png"), full_page=True)
        # The hostile name and error stayed text: their markup never ran.
        assert page.evaluate("document.body.dataset.pwned") is None
        assert page.locator("img[src=x]").count() == 0
    product = files.master.product("jam-1")
    assert (product["price"], product["description"]) == (3.5, CLERK_DESCRIPTION)
    assert [(e.id, e.status) for e in files.inbox.entries()] == [(1, "approved"), (2, "rejected")]


def test_cli_refuses_a_network_bind_without_a_credential(files: ConsoleFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from shelfsight.edge_app.cli import build_cli

    monkeypatch.delenv("SHELFSIGHT_CONSOLE_CREDENTIAL", raising=False)
    args = ["hq", "console", "--catalog", str(files.master.path), "--inbox", str(files.inbox.path)]
    result = CliRunner().invoke(build_cli(), [*args, "--listen", "0.0.0.0:8090", "--no-fleet-status"])
    assert result.exit_code != 0 and "set a credential" in result.output, result.output
    result = CliRunner().invoke(build_cli(), [*args, "--listen", "8090"])
    assert result.exit_code != 0 and "HOST:PORT" in result.output, result.output


def test_cli_serves_the_console_until_a_signal(broker: Broker, files: ConsoleFiles) -> None:
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.support.broker import free_port

    topics = Topics("shelfsight", FLEET)
    publish_statuses(broker, topics, files.master.model_fingerprint or "")
    port = free_port()
    command = [
        sys.executable, "-c", "from shelfsight.edge_app.cli import main; main()",
        "hq", "console", "--catalog", str(files.master.path), "--inbox", str(files.inbox.path),
        "--listen", f"127.0.0.1:{port}", "--host", "127.0.0.1", "--port", str(broker.port), "--fleet", FLEET,
    ]  # fmt: skip
    console = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def fleet() -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=5) as response:
                return json.load(response)
        except OSError:
            return None  # not listening yet

    try:
        wait_until(lambda: console.poll() is not None or len((fleet() or {}).get("kiosks", [])) == 2)
        assert console.poll() is None
        assert [k["kiosk_id"] for k in fleet()["kiosks"]] == ["k1", "k2"]
    finally:
        console.send_signal(signal.SIGTERM)
        output = console.communicate(timeout=30)[0].decode()
    assert console.returncode == 0, output
    assert f"HQ console at http://127.0.0.1:{port}" in output


def test_console_page_shows_a_withdrawn_enrollment_without_an_approve_button(files: ConsoleFiles) -> None:
    shots = artifact_dir("hq-console")
    with ConsoleServer(create_console(files), "127.0.0.1", 0) as server, chromium_page(1280, 900) as page:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        stale = page.locator('.enrollment[data-id="1"]')
        assert stale.locator("button.approve").count() == 1
        # Withdrawn while the page shows it: approving the stale card says why, and the list drops it.
        withdraw_first(files)
        stale.locator("button.approve").click()
        page.wait_for_selector('.enrollment[data-id="1"]', state="detached")
        assert "#1 was withdrawn by its kiosk" in (page.text_content("#notice") or "")
        page.select_option("#enrollment-status", "withdrawn")
        card = page.locator('.enrollment[data-id="1"][data-status="withdrawn"]')
        card.wait_for()
        assert (card.locator(".state").text_content() or "").startswith("Withdrawn by its kiosk")
        assert card.locator("button.approve").count() == 0 and card.locator("button.reject").count() == 0
        assert card.locator(".photos img").count() == 2  # kept for the record
        wait_until(lambda: page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        page.screenshot(path=str(shots / "4-withdrawn.png"), full_page=True)
        page.select_option("#enrollment-status", "all")
        page.wait_for_selector('.enrollment[data-id="2"][data-status="pending"] button.approve')
        assert page.locator('.enrollment[data-id="1"] button.approve').count() == 0
        assert page.evaluate("document.body.dataset.pwned") is None  # the hostile name stayed text
    assert [(e.id, e.status) for e in files.inbox.entries()] == [(1, "withdrawn"), (2, "pending")]
