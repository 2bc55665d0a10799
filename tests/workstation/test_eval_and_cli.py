"""`shelfsight eval` and the CLI surface: figures, report, clean errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_app.cli import build_cli
from edge_app.evaluate import _map_at_r, evaluate
from edge_app.runtime import open_embedder


def run(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    cli = build_cli()
    assert {"train", "convert", "eval"} <= set(cli.commands)
    for name, command in cli.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no example"


def test_map_at_r_definition():
    assert _map_at_r(["a", "a", "b"], "a", 2) == 1.0
    assert _map_at_r(["b", "a", "a"], "a", 2) == pytest.approx(0.25)  # only rank 2 within R=2: 1/2 / 2
    assert _map_at_r(["b", "b"], "a", 2) == 0.0


def test_eval_reports_figures_json_and_html(tiny_model: Path, tiny_dataset, tmp_path: Path):
    out, report = tmp_path / "e.json", tmp_path / "report"
    result = run("eval", "--model", str(tiny_model), "--catalog", str(tiny_dataset["catalog"]),
                 "--queries", str(tiny_dataset["queries"]), "--json", str(out), "--report", str(report), "--no-progress")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("recall_at_1", "recall_at_5", "map_at_r", "queries", "products", "query_ms_p50", "query_ms_p95",
                "per_product_recall"):
        assert key in data
    assert data["queries"] == 18 and data["products"] == 6
    assert 0 <= data["recall_at_1"] <= data["recall_at_5"] <= 1
    assert set(data["per_product_recall"]) == {f"product-{i:02d}" for i in range(6)}
    assert (report / "index.html").is_file() and (report / "recall_at_k.png").is_file()
    assert "Recall@1" in (report / "index.html").read_text()


def test_eval_with_keras_run_directory_matches_tflite(tiny_model: Path, tiny_run: Path, tiny_dataset):
    with open_embedder(tiny_run) as keras_model, open_embedder(tiny_model) as int8_model:
        a = evaluate(keras_model, tiny_dataset["catalog"], tiny_dataset["queries"])
        b = evaluate(int8_model, tiny_dataset["catalog"], tiny_dataset["queries"])
    assert abs(a.recall_at_1 - b.recall_at_1) <= 2 / 18  # at most two of 18 queries flip


def test_eval_restricted_to_products(tiny_model: Path, tiny_dataset):
    with open_embedder(tiny_model) as embedder:
        result = evaluate(embedder, tiny_dataset["catalog"], tiny_dataset["queries"], products={"product-01", "product-04"})
    assert result.products == 2 and result.queries == 6


def test_bad_inputs_get_one_line_errors_naming_the_file(tiny_model: Path, tiny_dataset, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("eval", "--model", str(tiny_model), "--catalog", str(empty), "--queries", str(tiny_dataset["queries"]))
    assert result.exit_code == 1 and "catalog folder" in result.output and "Traceback" not in result.output

    queries = tmp_path / "queries"
    shutil.copytree(tiny_dataset["queries"], queries)
    (queries / "product-02" / "broken.jpg").write_bytes(b"not an image at all")
    result = run("eval", "--model", str(tiny_model), "--catalog", str(tiny_dataset["catalog"]), "--queries", str(queries),
                 "--no-progress")
    assert result.exit_code == 1 and "broken.jpg" in result.output

    not_model = tmp_path / "model.tflite"
    not_model.write_text("hello")
    result = run("eval", "--model", str(not_model), "--catalog", str(tiny_dataset["catalog"]),
                 "--queries", str(tiny_dataset["queries"]))
    assert result.exit_code == 1 and "model.tflite" in result.output


def test_convert_and_train_commands_report_clean_errors(tmp_path: Path):
    (tmp_path / "run").mkdir()
    result = run("convert", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "m.tflite"))
    assert result.exit_code == 1 and "not a finished training run" in result.output
    one = tmp_path / "data" / "only-product"
    one.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32)).save(one / "a.jpg")
    result = run("train", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "r"), "--backbone", "tiny")
    assert result.exit_code == 1 and "single training image" in result.output
