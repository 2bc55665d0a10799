"""The packages type-check (they ship `py.typed`, so users' type checkers read these hints).

The repository keeps `train/`, `catalog/`, ... at the top level, but they install as
`shelfsight.train`, `shelfsight.catalog`, ... (setuptools `package_dir`). mypy cannot follow
the editable install's import hook, so the test lays the same mapping out as links in a
temporary folder and checks the `shelfsight` package there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("train", "convert", "catalog", "edge_app")


def test_packages_type_check(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    namespace = tmp_path / "shelfsight"
    namespace.mkdir()
    for name in PACKAGES:
        (namespace / name).symlink_to(ROOT / name, target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"), "--cache-dir", str(tmp_path / "cache"),
         "--namespace-packages", "--explicit-package-bases", "-p", "shelfsight"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "MYPYPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success" in result.stdout
