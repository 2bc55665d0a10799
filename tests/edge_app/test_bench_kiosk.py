"""The kiosk benchmark runs end to end on a small catalog and reports every stage, cold start and the host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("capture", "preprocess", "invoke", "search", "local", "verification", "decision", "total", "end_to_end")


def test_bench_kiosk_reports_stages_cold_start_and_host(tmp_path: Path) -> None:
    out = tmp_path / "kiosk.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_kiosk.py"),
            "--sizes",
            "100",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--no-after-boot",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["host"]["cpus"] >= 1 and report["host_reference"]["p50_ms"] > 0
    entry = report["sizes"]["100"]
    assert entry["references"] >= 100
    verified, global_only = entry["verified"], entry["global"]
    assert set(verified["stages_ms"]) == set(STAGES)
    # The clip shows products with empty gaps: some frames stop before the model, the rest are verified.
    assert 0 < verified["frames_through_model"] < verified["frames"]
    assert verified["frames_verified"] == verified["frames_through_model"]
    assert global_only["frames_verified"] == 0 and global_only["stages_ms"]["verification"]["p50"] == 0
    assert global_only["decisions"].get("product", 0) > 0 and global_only["non_invoke_overhead"] > 0
    cold = entry["cold"]
    assert cold["cold_start_s"] >= cold["imports_and_open_s"] > 0 and cold["rss_mb"] > 0
    assert cold["tensorflow_loaded"] is False
    assert entry["cold_after_boot"] == {"skipped": "--no-after-boot"}
