"""`shelfsight eval`: measure retrieval accuracy and latency of a model on labelled folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edge_app.cli import domain_errors


@click.command("eval")
@click.option("--model", required=True, type=click.Path(exists=True),
              help="A .tflite embedder (with its .json sidecar) or a training run directory.")
@click.option("--catalog", "catalog_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Reference images, one subfolder per product (ImageFolder).")
@click.option("--queries", "queries_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Query images, same layout; folder names are the ground truth.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the figures as JSON here.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write an HTML report with plots here.")
@click.option("--threads", type=int, default=2, show_default=True, help="Interpreter threads for .tflite models.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@domain_errors
def eval_command(model, catalog_dir, queries_dir, json_out, report_dir, threads, progress) -> None:
    """Rank each query's products by their best reference and report Recall@1/5, MAP@R, latency.

    \b
    Example:
      shelfsight eval --model edge_app/assets/default_model.tflite \\
        --catalog data/iconic --queries data/val --json eval.json --report eval-report
    """
    if Path(model).is_dir():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edge_app.evaluate import evaluate
    from edge_app.runtime import open_embedder

    with open_embedder(model, threads=threads) as embedder:
        result = evaluate(embedder, catalog_dir, queries_dir, progress=progress)
    data = result.to_dict()
    data["model"] = str(model)
    data["model_fingerprint"] = embedder.fingerprint
    click.echo(
        f"recall@1 {result.recall_at_1:.4f}  recall@5 {result.recall_at_5:.4f}  map@r {result.map_at_r:.4f}  "
        f"queries {result.queries}  products {result.products}  "
        f"latency p50 {result.query_ms_p50:.2f} ms p95 {result.query_ms_p95:.2f} ms"
    )
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(data, indent=2) + "\n")
    if report_dir:
        from edge_app.report import write_report

        index = write_report(result, catalog_dir, report_dir, title=f"shelfsight eval: {Path(model).name}")
        click.echo(f"report: {index}")


COMMANDS = [eval_command]
