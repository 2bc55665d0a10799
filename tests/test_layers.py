"""The layering the README's "Layers" section draws holds, function-level imports included.

import-linter (contracts in setup.cfg) builds the import graph of the installed
`shelfsight` packages with grimp, which sees imports inside functions too, so a
lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_contracts_have_no_exceptions() -> None:
    """The layering is the code's real shape: no contract carries `ignore_imports`."""
    assert "ignore_imports" not in (ROOT / "setup.cfg").read_text()
