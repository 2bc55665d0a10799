from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shelfsight.edge_app.demo.cli import demo_command
from shelfsight.edge_app.demo.samples import (
    SampleSet,
    generate_clip,
    generate_sample_set,
)
from shelfsight.edge_app.kiosk.cli import kiosk_command

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, model: Path, catalog: Path, frames: Path, port: int = 0, extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(f"""
        [model]
        path = "{model}"
        threads = 1

        [catalog]
        path = "{catalog}"

        [camera]
        type = "folder"
        path = "{frames}"
        interval_s = 0.05
        loop = true

        [roi]
        x = 0.0
        y = 0.0
        width = 1.0
        height = 1.0

        [recognition]
        shortlist = 8
        unknown_threshold = 0.5
        accept_similarity = 1.01

        [web]
        port = {port}
    """)
        + extra
    )
    return path


def test_validate_config(tmp_path: Path, tiny_model: Path, sample_catalog: Any, sample_set: SampleSet) -> None:
    good = write_config(tmp_path / "kiosk.toml", tiny_model, sample_catalog.path, sample_set.queries_dir / "P0002")
    result = CliRunner().invoke(kiosk_command, ["--config", str(good), "--validate-config"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "camera: folder" in result.output
    bad = write_config(tmp_path / "bad.toml", tiny_model, sample_catalog.path, tmp_path, extra="\n[wifi]\nssid = 'x'\n")
    result = CliRunner().invoke(kiosk_command, ["--config", str(bad), "--validate-config"])
    assert result.exit_code == 1 and "wifi: unknown key" in result.output and "Traceback" not in result.output


def test_kiosk_with_a_missing_catalog_is_a_clean_error(tmp_path: Path, tiny_model: Path, sample_set: SampleSet) -> None:
    cfg = write_config(tmp_path / "kiosk.toml", tiny_model, tmp_path / "none.db", sample_set.queries_dir)
    result = CliRunner().invoke(kiosk_command, ["--config", str(cfg)])
    assert result.exit_code == 1 and "no such catalog" in result.output


KIOSK_PROCESS = r"""
import json, sys, threading, time, urllib.request
from shelfsight.edge_app.kiosk.config import load_config
from shelfsight.edge_app.kiosk.cli import run_kiosk

config = load_config(sys.argv[1])
stop = threading.Event()
runner = threading.Thread(target=run_kiosk, args=(config, stop))
runner.start()
url = f"http://127.0.0.1:{config.web.port}"
state, health, display, deadline = None, None, None, time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        state = json.load(urllib.request.urlopen(url + "/api/state", timeout=5))
        if state["decision"] == "product":
            health = json.load(urllib.request.urlopen(url + "/health", timeout=5))
            display = json.load(urllib.request.urlopen(url + "/api/display", timeout=5))
            break
    except OSError:
        pass
    time.sleep(0.1)
stop.set()
runner.join()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "torch"))
print(json.dumps({"state": state, "health": health, "display": display, "heavy_modules": heavy}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_kiosk_process_recognises_and_never_imports_tensorflow(
    tmp_path: Path, tiny_model: Path, sample_catalog: Any, sample_set: SampleSet
) -> None:
    frames = sample_set.catalog_dir / "P0003"  # reference views: every frame is recognisable
    cfg = write_config(
        tmp_path / "kiosk.toml",
        tiny_model,
        sample_catalog.path,
        frames,
        port=free_port(),
        extra='currency = "EUR"\nlocale = "de-DE"\n',
    )  # still inside [web]
    out = subprocess.run(
        [sys.executable, "-c", KIOSK_PROCESS, str(cfg)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy_modules"] == []
    assert report["state"]["decision"] == "product", out.stderr[-2000:]
    assert report["state"]["product"]["product_id"] == "P0003"
    assert report["health"]["model_fingerprint"] and report["health"]["frames_recognised"] >= 3
    assert report["display"] == {"currency": "EUR", "locale": "de-DE", "language": "en"}  # the config reaches the page


def test_kiosk_command_stops_cleanly_on_sigterm(
    tmp_path: Path, tiny_model: Path, sample_catalog: Any, sample_set: SampleSet
) -> None:
    """systemd stops the service with SIGTERM: the kiosk shuts its threads down and exits 0."""
    port = free_port()
    cfg = write_config(
        tmp_path / "kiosk.toml", tiny_model, sample_catalog.path, sample_set.catalog_dir / "P0001", port=port
    )
    kiosk = subprocess.Popen(
        [sys.executable, "-c", "from shelfsight.edge_app.cli import main; main()", "kiosk", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, health = time.monotonic() + 90, None
        while health is None and time.monotonic() < deadline and kiosk.poll() is None:
            try:
                health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5))
            except OSError:
                time.sleep(0.2)
        assert health is not None and health["model_fingerprint"], "the kiosk never answered /health"
    finally:
        kiosk.send_signal(signal.SIGTERM)
        output = kiosk.communicate(timeout=30)[0].decode()
    assert kiosk.returncode == 0, output[-2000:]
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo folder with the default sample set and clip already rendered (the demo reuses them)."""
    workdir = tmp_path_factory.mktemp("demo")
    sample = generate_sample_set(workdir / "samples")
    generate_clip(workdir / "samples" / "clip.avi", sample)
    return workdir


def test_demo_runs_end_to_end(demo_workdir: Path, tiny_model: Path) -> None:
    tmp_path = demo_workdir
    result = CliRunner().invoke(
        demo_command, ["--workdir", str(tmp_path), "--model", str(tiny_model), "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("catalog: 12 products") for line in lines)
    table = [line for line in lines if line.strip()[:1].isdigit() and ("empty" in line or "P00" in line)]
    assert len(table) == 12  # one line per second of the 12 s clip
    assert "fps" in result.output and (tmp_path / "catalog.db").is_file()


def test_demo_live_mode_on_a_camera_stream(demo_workdir: Path, tiny_model: Path) -> None:
    """`--camera` runs the kiosk threads; a recording stands in for the camera (the sample set is reused)."""
    clip = demo_workdir / "samples" / "clip.avi"
    result = CliRunner().invoke(
        demo_command,
        ["--workdir", str(demo_workdir), "--model", str(tiny_model), "--camera", str(clip), "--seconds", "3"],
    )
    assert result.exit_code == 0, result.output
    live = [
        line for line in result.output.splitlines() if line.strip().endswith(("empty", "starting")) or " P00" in line
    ]
    assert len(live) >= 2 and "second" not in result.output  # live lines, not the clip report
