"""Data from outside printed to a terminal: control characters come out escaped, never executed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.core.clitools import printable

# Clears the screen, returns to the line's start and overwrites it: a taught name faking a report.
HOSTILE = "Jam\x1b[2J\rALL CLEAR\u202e"
SHOWN = "Jam\\x1b[2J\\rALL CLEAR\\u202e"


def cli(*args: str) -> str:
    result = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_printable_escapes_controls_and_keeps_text() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable("Café 330ml ½ 🍓") == "Café 330ml ½ 🍓"
    assert printable("a\tb\nc\x00\x7f\x9b") == "a\\tb\\nc\\x00\\x7f\\x9b"
    assert printable("line\nnext", keep="\n") == "line\nnext"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate cannot be encoded, so it cannot be printed


def test_catalog_list_and_show_escape_names(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with Catalog(db) as catalog:
        catalog.add_product("jam", HOSTILE, category="\x1b]0;title\x07", note="\rx")
    listing = cli("catalog", "list", "--db", str(db))
    assert listing == f"jam\t{SHOWN}\t\\x1b]0;title\\x07\t0 refs\n"
    shown = cli("catalog", "show", "--db", str(db), "jam")
    assert f"name: {SHOWN}\n" in shown and "  note: \\rx\n" in shown
    assert "\x1b" not in listing + shown and "\r" not in listing + shown


def test_hq_enrollments_escapes_what_kiosks_sent(tmp_path: Path) -> None:
    from shelfsight.catalog.hq.inbox import EnrollmentInbox
    from shelfsight.catalog.sync.messages import EnrolledFrame, Enrollment

    frame = EnrolledFrame(embedding=[1.0, 0.0], fingerprint="f" * 64)
    # Constructed unchecked: whatever the message rules, the table must not trust what the inbox holds.
    enrollment = Enrollment.model_construct(
        kiosk_id="k1", product_id="jam\r", name=HOSTILE, category="", frames=[frame], created=0.0
    )
    inbox = tmp_path / "enroll.db"
    with EnrollmentInbox(inbox) as box:
        box.add(enrollment)
    table = cli("hq", "enrollments", "--inbox", str(inbox))
    assert SHOWN in table and "jam\\r" in table
    assert "\x1b" not in table and "\r" not in table


def test_hq_status_escapes_what_kiosks_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retained statuses are kiosk-written; the broker is replaced here, the printing is real."""
    import shelfsight.catalog.hq.fleet as fleet
    from shelfsight.catalog.sync.messages import KioskStatus

    status = KioskStatus(kiosk_id="k1", catalog_version=3, last_error=HOSTILE, updated=1.0)
    monkeypatch.setattr(fleet, "collect_status", lambda *a, **kw: ([status], [f"status/k2: {HOSTILE}"]))
    result = CliRunner().invoke(build_cli(), ["hq", "status", "--wait", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert SHOWN in result.output and f"unreadable status: status/k2: {SHOWN}" in result.output
    assert "\x1b" not in result.output and "\r" not in result.output
