"""The search benchmark script runs end to end and writes its figures with the machine they came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_search_writes_figures_and_host(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_search.py"),
            "--sizes",
            "2000",
            "--dims",
            "64",
            "--queries",
            "20",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(out.read_text())
    assert report["host"]["cpus"] >= 1 and report["host"]["machine"]
    yardstick = report["host_reference"]
    # Both figures are rounded from one unrounded measurement, so they agree to within the rounding.
    assert yardstick["p50_ms"] > 0
    assert abs(yardstick["slowdown_vs_issue_machine"] - yardstick["p50_ms"] / 1.8) <= 0.0051
    [row] = report["results"]
    assert row["references"] == 2000 and row["dim"] == 64 and row["queries"] == 20
    assert 0.9 <= row["recall_at_5"] <= 1.0 and row["p50_ms"] > 0
