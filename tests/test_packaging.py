"""shelfsight installs under one name: `shelfsight.train`, `shelfsight.catalog`, ... (setuptools `package_dir`).

The repository keeps `train/`, `convert/`, `catalog/` and `edge_app/` at its top level, but a
wheel must not put such generic names straight into site-packages, where they would collide
with any other package called `train` or `catalog`.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("train", "convert", "catalog", "edge_app")


def _listed_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    on_disk = {
        "shelfsight." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in PACKAGE_DIRS
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk == _listed_packages()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("wheel", reason="building the wheel offline needs setuptools and wheel (dev extra)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("shelfsight-*.whl")
    return path


def test_wheel_has_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"shelfsight"}
    for data in ("shelfsight/edge_app/assets/default_model.tflite", "shelfsight/edge_app/web/static/index.html",
                 "shelfsight/edge_app/py.typed"):  # fmt: skip
        assert data in names
    assert not any(name.startswith("shelfsight/tests/") for name in names)


def test_installed_wheel_imports_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # -S: no site hooks, so the editable install's finder cannot answer; dependencies from this venv.
    path = f"{target}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"
    code = (
        "import shelfsight, shelfsight.edge_app.cli as cli, shelfsight.catalog.store as store; "
        "cli.build_cli(); print(store.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith(str(target))
