"""`shelfsight eval`: measure retrieval accuracy and latency of a model on labelled folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from shelfsight.edge_app.core.clitools import domain_errors, progress_option, wants_progress


@click.command("eval")
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True),
    help="A .tflite embedder (with its .json sidecar) or a training run directory.",
)
@click.option(
    "--catalog",
    "catalog_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Reference images, one subfolder per product (ImageFolder).",
)
@click.option(
    "--queries",
    "queries_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Query images, same layout; folder names are the ground truth.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the figures as JSON here.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write an HTML report with plots here.")
@click.option("--threads", type=int, default=2, show_default=True, help="Interpreter threads for .tflite models.")
@progress_option
@click.option(
    "--pipeline",
    type=click.Choice(["global", "full"]),
    default="global",
    show_default=True,
    help="global: embedding similarity only; full: the kiosk's pipeline (catalog build, shortlist, "
    "geometric verification, scoring).",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Instead of ranking figures, hold products out of the catalog and find the 'not in catalog' threshold.",
)
@click.option(
    "--holdout", type=float, default=0.25, show_default=True, help="Share of products held out by --calibrate."
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    help="Rounds of --calibrate, each holding out another --holdout share of the products "
    "(default: enough that every product is held out once).",
)
@click.option(
    "--max-announced",
    type=click.FloatRange(min=0, max=1, max_open=True),
    help="With --calibrate: pick the loosest threshold that announces at most this share of held-out "
    "products' queries as a product (e.g. 0.05), instead of the best right-minus-wrong balance.",
)
@click.option(
    "--store",
    "store_db",
    type=click.Path(dir_okay=False, exists=True),
    help="With --calibrate: write the threshold into this catalog database, where the kiosk reads it.",
)
@domain_errors
def eval_command(
    model,
    catalog_dir,
    queries_dir,
    json_out,
    report_dir,
    threads,
    progress,
    pipeline,
    calibrate,
    holdout,
    rounds,
    max_announced,
    store_db,
) -> None:
    """Rank each query's products by their best reference and report Recall@1/5, MAP@R, latency.

    \b
    Example:
      shelfsight eval --model edge_app/assets/default_model.tflite \\
        --catalog data/iconic --queries data/val --json eval.json --report eval-report
      shelfsight eval --model M.tflite --catalog refs --queries photos --pipeline full --calibrate --store kiosk.db
      shelfsight eval --model M.tflite --catalog refs --queries photos --pipeline full --calibrate --max-announced 0.05
    """
    progress = wants_progress(progress)
    if Path(model).is_dir():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from shelfsight.edge_app.core.labels import scan_folder
    from shelfsight.edge_app.evaluation.pipeline import PipelineRanker
    from shelfsight.edge_app.evaluation.pipeline import calibrate as run_calibration
    from shelfsight.edge_app.evaluation.retrieval import evaluate
    from shelfsight.edge_app.runtime.factory import open_embedder

    with open_embedder(model, threads=threads) as embedder:
        if store_db and not calibrate:
            raise click.UsageError("--store writes the threshold --calibrate finds: give both")
        if max_announced is not None and not calibrate:
            raise click.UsageError("--max-announced chooses the threshold --calibrate finds: give both")
        if store_db:
            _check_store(store_db, embedder)  # before the minutes of calibration it would throw away
        if calibrate:
            _calibrate(
                run_calibration(
                    embedder,
                    catalog_dir,
                    queries_dir,
                    pipeline=pipeline,
                    holdout=holdout,
                    rounds=rounds,
                    max_announced=max_announced,
                    progress=progress,
                ),
                json_out,
                store_db,
                embedder,
            )
            return
        ranker = (
            PipelineRanker(embedder, scan_folder(catalog_dir, "catalog"), progress=progress)
            if pipeline == "full"
            else None
        )
        try:
            result = evaluate(embedder, catalog_dir, queries_dir, ranker=ranker, progress=progress)
        finally:
            if ranker is not None:
                ranker.close()
    data = result.to_dict()
    data["model"] = str(model)
    data["model_fingerprint"] = embedder.fingerprint
    data["pipeline"] = pipeline
    click.echo(
        f"recall@1 {result.recall_at_1:.4f}  recall@5 {result.recall_at_5:.4f}  map@r {result.map_at_r:.4f}  "
        f"queries {result.queries}  products {result.products}  "
        f"latency p50 {result.query_ms_p50:.2f} ms p95 {result.query_ms_p95:.2f} ms"
    )
    _write_json(json_out, data)
    if report_dir:
        from shelfsight.edge_app.evaluation.report import write_report

        index = write_report(result, catalog_dir, report_dir, title=f"shelfsight eval: {Path(model).name}")
        click.echo(f"report: {index}")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _check_store(store_db: str, embedder: Any) -> None:
    """CatalogError unless `--store` names a catalog built with the model being evaluated."""
    from shelfsight.catalog.store import Catalog

    with Catalog(store_db, create=False) as catalog:
        # A threshold is only meaningful for the model (and vocabulary, and pipeline) it was measured with.
        catalog.check_model(embedder.fingerprint)


def _calibrate(calibration, json_out: str | None, store_db: str | None, embedder: Any, config: Any = None) -> None:
    from shelfsight.edge_app.recognition.config import RecognitionConfig
    from shelfsight.edge_app.recognition.pipeline import CALIBRATION_META_KEY, THRESHOLD_META_KEY, Recognizer

    click.echo(
        f"threshold {calibration.threshold:.4f}  known products answered right {calibration.known_accept_rate:.4f}  "
        f"held-out products refused {calibration.unknown_reject_rate:.4f}  "
        f"({calibration.known_queries} known / {calibration.unknown_queries} unknown queries over {calibration.rounds} rounds, "
        f"{calibration.pipeline})"
    )
    _write_json(json_out, calibration.to_dict())
    if store_db:
        from shelfsight.catalog.store import Catalog

        with Catalog(store_db, create=False) as catalog:
            catalog.check_model(embedder.fingerprint)  # again: it may have been rebuilt meanwhile
            recognition = config or RecognitionConfig(verify=calibration.pipeline == "full")
            binding = Recognizer(embedder, catalog, recognition).calibration_binding()
            catalog.set_meta(THRESHOLD_META_KEY, calibration.threshold)
            catalog.set_meta(CALIBRATION_META_KEY, binding)
        click.echo(f"stored in {store_db} (for model {binding['model'][:12]}, {binding['pipeline']} pipeline)")


COMMANDS = [eval_command]
