"""`shelfsight eval` and the CLI surface: figures, report, clean errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.evaluation.retrieval import _map_at_r, evaluate
from shelfsight.edge_app.runtime.factory import open_embedder


def run(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    cli = build_cli()
    assert {"train", "convert", "eval"} <= set(cli.commands)
    for name in cli.commands:
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no example"


def test_map_at_r_definition():
    assert _map_at_r(["a", "a", "b"], "a", 2) == 1.0
    assert _map_at_r(["b", "a", "a"], "a", 2) == pytest.approx(0.25)  # only rank 2 within R=2: 1/2 / 2
    assert _map_at_r(["b", "b"], "a", 2) == 0.0


def test_eval_reports_figures_and_json(tiny_model: Path, tiny_dataset, tmp_path: Path):
    out = tmp_path / "e.json"
    args = ["--catalog", str(tiny_dataset["catalog"]), "--queries", str(tiny_dataset["queries"])]
    result = run("eval", "--model", str(tiny_model), *args, "--json", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("recall_at_1", "recall_at_5", "map_at_r", "queries", "products", "query_ms_p50", "query_ms_p95",
                "per_product_recall"):  # fmt: skip
        assert key in data
    assert data["queries"] == 18 and data["products"] == 6
    assert 0 <= data["recall_at_1"] <= data["recall_at_5"] <= 1
    assert set(data["per_product_recall"]) == {f"product-{i:02d}" for i in range(6)}


def test_eval_html_report(tiny_model: Path, tiny_dataset, tmp_path: Path):
    pytest.importorskip("matplotlib", reason="--report draws its figures with matplotlib (the train extra)")
    report = tmp_path / "report"
    args = ["--catalog", str(tiny_dataset["catalog"]), "--queries", str(tiny_dataset["queries"])]
    result = run("eval", "--model", str(tiny_model), *args, "--report", str(report), "--no-progress")
    assert result.exit_code == 0, result.output
    assert (report / "index.html").is_file() and (report / "recall_at_k.png").is_file()
    assert "Recall@1" in (report / "index.html").read_text()


def test_eval_with_keras_run_directory_matches_tflite(fresh_tiny_model: Path, tiny_run: Path, tiny_dataset):
    with open_embedder(tiny_run) as keras_model, open_embedder(fresh_tiny_model) as int8_model:
        a = evaluate(keras_model, tiny_dataset["catalog"], tiny_dataset["queries"])
        b = evaluate(int8_model, tiny_dataset["catalog"], tiny_dataset["queries"])
    assert abs(a.recall_at_1 - b.recall_at_1) <= 2 / 18  # at most two of 18 queries flip


def test_eval_restricted_to_products(tiny_model: Path, tiny_dataset):
    with open_embedder(tiny_model) as embedder:
        result = evaluate(
            embedder, tiny_dataset["catalog"], tiny_dataset["queries"], products={"product-01", "product-04"}
        )
    assert result.products == 2 and result.queries == 6


def test_bad_inputs_get_one_line_errors_naming_the_file(tiny_model: Path, tiny_dataset, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("eval", "--model", str(tiny_model), "--catalog", str(empty), "--queries", str(tiny_dataset["queries"]))
    assert result.exit_code == 1 and "catalog folder" in result.output and "Traceback" not in result.output

    queries = tmp_path / "queries"
    shutil.copytree(tiny_dataset["queries"], queries)
    (queries / "product-02" / "broken.jpg").write_bytes(b"not an image at all")
    result = run(
        "eval",
        "--model",
        str(tiny_model),
        "--catalog",
        str(tiny_dataset["catalog"]),
        "--queries",
        str(queries),
        "--no-progress",
    )
    assert result.exit_code == 1 and "broken.jpg" in result.output

    not_model = tmp_path / "model.tflite"
    not_model.write_text("hello")
    result = run(
        "eval",
        "--model",
        str(not_model),
        "--catalog",
        str(tiny_dataset["catalog"]),
        "--queries",
        str(tiny_dataset["queries"]),
    )
    assert result.exit_code == 1 and "model.tflite" in result.output


@pytest.mark.workstation
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


def test_train_and_convert_without_tensorflow_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On a kiosk's edge-only install, the workstation commands refuse with the install line, not a traceback."""
    import shelfsight.train.cli

    monkeypatch.setattr(shelfsight.train.cli, "tensorflow_available", lambda: False)
    for command in (["train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")],
                    ["convert", "--model", str(tmp_path), "--out", str(tmp_path / "m.tflite")]):  # fmt: skip
        result = run(*command)
        assert result.exit_code == 1, result.output
        assert f"`shelfsight {command[0]}` needs TensorFlow" in result.output
        assert "pip install 'shelfsight[train]'" in result.output and "Traceback" not in result.output


def test_full_pipeline_eval_and_calibration_store_threshold(tiny_model: Path, tmp_path: Path):
    """`--pipeline full` runs the kiosk's recognizer; `--calibrate --store` writes the threshold it reads."""
    from shelfsight.catalog.store import Catalog
    from shelfsight.edge_app.demo.samples import generate_sample_set
    from shelfsight.edge_app.recognition.pipeline import THRESHOLD_META_KEY

    samples = generate_sample_set(tmp_path / "samples", n_products=6, refs_per_product=2, queries_per_product=2)
    common = [
        "--model",
        str(tiny_model),
        "--catalog",
        str(samples.catalog_dir),
        "--queries",
        str(samples.queries_dir),
        "--no-progress",
    ]
    glob = run("eval", *common, "--json", str(tmp_path / "g.json"))
    full = run("eval", *common, "--pipeline", "full", "--json", str(tmp_path / "f.json"))
    assert glob.exit_code == 0 and full.exit_code == 0, full.output
    g, f = json.loads((tmp_path / "g.json").read_text()), json.loads((tmp_path / "f.json").read_text())
    assert f["pipeline"] == "full" and f["queries"] == g["queries"] == 12
    # geometric verification on rendered packaging must not do worse than embeddings alone
    assert f["recall_at_1"] >= g["recall_at_1"]

    db = tmp_path / "kiosk.db"
    Catalog(db).close()
    cal = run(
        "eval",
        *common,
        "--pipeline",
        "full",
        "--calibrate",
        "--holdout",
        "0.34",
        "--rounds",
        "1",
        "--store",
        str(db),
        "--json",
        str(tmp_path / "c.json"),
    )
    assert cal.exit_code == 0, cal.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["held_out_products"]) == 2 and data["unknown_queries"] == 4 and data["known_queries"] == 8
    assert data["rounds"] == 1
    assert 0 <= data["unknown_reject_rate"] <= 1
    with Catalog(db) as catalog:
        assert float(catalog.get_meta(THRESHOLD_META_KEY)) == pytest.approx(data["threshold"])
        # Bound to what it calibrated: the full pipeline reads it; the global one, whose scores are
        # on another scale, gets the safe default instead (and a warning).
        from shelfsight.edge_app.recognition import Recognizer
        from shelfsight.edge_app.recognition.config import RecognitionConfig
        from shelfsight.edge_app.runtime.factory import open_embedder

        with open_embedder(tiny_model) as embedder:
            full_kiosk = Recognizer(embedder, catalog, RecognitionConfig())
            assert full_kiosk.unknown_threshold == pytest.approx(data["threshold"])
            global_kiosk = Recognizer(embedder, catalog, RecognitionConfig(verify=False))
            assert global_kiosk.unknown_threshold == RecognitionConfig().default_unknown_threshold


def test_calibration_holds_every_product_out_once_by_default(tiny_model: Path, tmp_path: Path):
    from shelfsight.edge_app.demo.samples import generate_sample_set

    samples = generate_sample_set(tmp_path / "samples", n_products=7, refs_per_product=1, queries_per_product=2)
    common = ["eval", "--model", str(tiny_model), "--catalog", str(samples.catalog_dir)]
    common += ["--queries", str(samples.queries_dir), "--no-progress", "--calibrate", "--holdout", "0.3"]
    result = run(*common, "--json", str(tmp_path / "all.json"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "all.json").read_text())
    # 1 / 0.3 -> 3 groups (3, 2, 2 products): 3 rounds, each product unknown once, known in the others.
    assert data["rounds"] == 3 and len(data["held_out_products"]) == 7
    assert data["unknown_queries"] == 14 and data["known_queries"] == 7 * 2 * 2
    assert "over 3 rounds" in result.output
    # the curve runs down to the threshold that announces no held-out query
    assert data["curve"][-1][2] == 0.0 and data["curve"][0][2] > 0
    strict = run(*common, "--max-announced", "0", "--json", str(tmp_path / "strict.json"))
    assert strict.exit_code == 0, strict.output
    assert json.loads((tmp_path / "strict.json").read_text())["unknown_reject_rate"] == 1.0
    refused = run(*common, "--rounds", "0")
    assert refused.exit_code == 2 and "--rounds" in refused.output
    alone = run(*common[:-3], "--max-announced", "0.05")  # without --calibrate
    assert alone.exit_code == 2 and "--max-announced" in alone.output


def test_choose_threshold_separates_scores():
    import numpy as np

    from shelfsight.edge_app.evaluation.pipeline import choose_threshold

    threshold, accept, false_accept = choose_threshold(np.array([0.9, 0.8, 0.85]), np.array([0.3, 0.5, 0.82]))
    assert 0.5 < threshold <= 0.8 and accept == 1.0 and false_accept == pytest.approx(1 / 3)


def test_the_trade_off_lists_every_operating_point():
    import numpy as np

    from shelfsight.edge_app.evaluation.pipeline import trade_off

    correct = np.array([1.0, 1.2, 1.4, 1.6])
    unknown = np.array([0.5, 1.1, 1.3, -np.inf])
    curve = trade_off(correct, unknown, known_queries=5)  # one known query answered wrong
    thresholds = [t for t, _, _ in curve]
    assert thresholds == sorted(thresholds) and thresholds[0] == 0.5
    # loosest: every right answer and every finite held-out score accepted; the -inf one never is
    assert curve[0][1:] == (0.8, 0.75)
    # just above each held-out score the announced share drops by one query
    assert [a for _, _, a in curve] == [0.75, 0.5, 0.25, 0.0]
    assert [k for _, k, _ in curve] == [0.8, 0.8, 0.6, 0.4]


def test_a_threshold_for_an_announced_share_refuses_enough_held_out_queries():
    import numpy as np

    from shelfsight.edge_app.evaluation.pipeline import threshold_for_announced

    correct = np.array([0.9, 1.5, 1.7])
    unknown = np.array([0.2, 1.0, 1.2, 1.2, 1.6])
    at_most_one = threshold_for_announced(correct, unknown, 0.2)  # 1 of 5 may be announced
    assert 1.2 < at_most_one < 1.6 and int(np.sum(unknown >= at_most_one)) == 1
    # two may be announced, but the second and third tie: both are refused
    at_most_two = threshold_for_announced(correct, unknown, 0.4)
    assert at_most_two == at_most_one
    assert threshold_for_announced(correct, unknown, 0.0) > 1.6
    assert threshold_for_announced(correct, unknown, 0.99) == np.nextafter(0.2, np.inf)  # 4 of 5
    # a held-out query nothing answered (-inf) is never announced: the one other may be
    assert threshold_for_announced(correct, np.array([1.0, -np.inf]), 0.5) == 0.9
