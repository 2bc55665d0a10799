"""Commands write what they mean to: no runtime banner on every model load, no progress bars into logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from shelfsight.edge_app.cli import build_cli

OPEN_TWICE = """
import sys
from shelfsight.edge_app.runtime.factory import open_embedder
print("before", file=sys.stderr, flush=True)
for _ in range(2):
    with open_embedder(sys.argv[1]) as embedder:
        pass
print("after", file=sys.stderr, flush=True)
"""


def test_model_loads_print_no_xnnpack_banner(tiny_model: Path) -> None:
    result = subprocess.run([sys.executable, "-c", OPEN_TWICE, str(tiny_model)], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"XNNPACK" not in result.stderr and result.stderr.splitlines() == [b"before", b"after"]


def test_no_progress_bar_when_output_is_not_a_terminal(
    tmp_path: Path, tiny_model: Path, tiny_dataset: dict[str, Path]
) -> None:
    args = ["catalog", "build", "--model", str(tiny_model), "--images", str(tiny_dataset["catalog"])]
    quiet = CliRunner().invoke(build_cli(), [*args, "--db", str(tmp_path / "a.db")])
    assert quiet.exit_code == 0 and "img/s" not in quiet.output and "catalog:" not in quiet.output, quiet.output
    asked = CliRunner().invoke(build_cli(), [*args, "--db", str(tmp_path / "b.db"), "--progress"])
    assert asked.exit_code == 0 and "img" in asked.output  # an explicit --progress still shows it
