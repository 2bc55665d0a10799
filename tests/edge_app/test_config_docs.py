"""The config reference is generated from the models and current; every example config loads strictly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shelfsight.edge_app.camera.config import FolderConfig, OpenCVCameraConfig, PiCameraConfig, VideoConfig
from shelfsight.edge_app.kiosk.config import load_config
from shelfsight.edge_app.kiosk.reference import config_reference

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "deploy" / "examples").glob("*.toml")) + [REPO / "deploy/systemd/kiosk.example.toml"]


def test_committed_reference_is_current() -> None:
    assert (REPO / "docs/config.md").read_text() == config_reference(), "run scripts/config_reference.py"
    check = subprocess.run([sys.executable, str(REPO / "scripts/config_reference.py"), "--check"], capture_output=True)
    assert check.returncode == 0, check.stderr


def test_reference_names_every_section_and_camera_type() -> None:
    text = config_reference()
    for heading in ("[model]", "[catalog]", "[roi]", "[recognition]", "[web]", "[sync]"):
        assert f"## {heading}" in text
    for kind in ("picamera", "opencv", "video", "folder"):
        assert f'## [camera] `type = "{kind}"`' in text
    assert "| `public_key` | path | `hq_signing.pub` |" in text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_with_the_strict_models(path: Path) -> None:
    load_config(path)


def test_examples_cover_each_camera_type_and_sync() -> None:
    configs = [load_config(path) for path in EXAMPLES]
    kinds = {type(c.camera) for c in configs}
    assert kinds == {PiCameraConfig, OpenCVCameraConfig, VideoConfig, FolderConfig}
    assert any(c.sync is not None and c.sync.tls_ca is not None for c in configs)
