"""A staff PIN written the way `shelfsight kiosk set-staff-pin` writes it, and a logged-in test client."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient

from shelfsight.edge_app.web.auth import StaffCredential, write_staff_credential

PIN = "246810"


def staff_credential(folder: Path, pin: str = PIN) -> StaffCredential:
    return StaffCredential.load(write_staff_credential(folder / "staff.pin", pin))


def log_in(client: FlaskClient, pin: str = PIN) -> str:
    """Log `client` in; its later requests carry the session cookie and the CSRF header. Returns the token."""
    response = client.post("/api/staff/login", json={"pin": pin})
    assert response.status_code == 200, response.json
    token: str = response.json["csrf_token"]
    client.environ_base["HTTP_X_CSRF_TOKEN"] = token
    return token
