"""`shelfsight convert`: export a training run as a verified TFLite embedder."""

from __future__ import annotations

import click

from shelfsight.edge_app.core.clitools import domain_errors
from shelfsight.train.cli import prepare_tensorflow


@click.command("convert")
@click.option(
    "--model",
    "run_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Training run directory (holds model.keras and manifest.json).",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .tflite (sidecar: OUT.json)."
)
@click.option(
    "--quantization",
    type=click.Choice(["int8", "fp16", "fp32"]),
    default="int8",
    show_default=True,
    help="int8 = full-integer, uint8 pixels in, float embedding out.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of representative images (any depth) for int8 calibration.",
)
@click.option(
    "--calibration-limit",
    type=int,
    default=300,
    show_default=True,
    help="How many calibration images to sample (reproducibly).",
)
@click.option(
    "--parity-catalog",
    type=click.Path(exists=True, file_okay=False),
    help="Validation catalog (ImageFolder) for the Recall@1 parity gate.",
)
@click.option(
    "--parity-queries",
    type=click.Path(exists=True, file_okay=False),
    help="Validation queries (ImageFolder) for the parity gate.",
)
@click.option(
    "--min-cosine", type=float, default=0.98, show_default=True, help="Minimum mean cosine to the float model."
)
@click.option("--max-recall-drop", type=float, default=1.0, show_default=True, help="Maximum Recall@1 drop, in points.")
@domain_errors
def convert_command(
    run_dir,
    out,
    quantization,
    calibration,
    calibration_limit,
    parity_catalog,
    parity_queries,
    min_cosine,
    max_recall_drop,
) -> None:
    """Convert a trained model to TFLite and verify it against the float model.

    \b
    Example:
      shelfsight convert --model runs/grocery --out models/grocery.tflite \\
        --calibration data/train --parity-catalog data/iconic --parity-queries data/val
    """
    prepare_tensorflow("convert")
    from shelfsight.convert.tflite import convert_run

    spec = convert_run(
        run_dir,
        out,
        quantization=quantization,
        calibration_dir=calibration,
        parity_catalog=parity_catalog,
        parity_queries=parity_queries,
        min_cosine=min_cosine,
        max_drop_points=max_recall_drop,
        calibration_limit=calibration_limit,
    )
    click.echo(
        f"wrote {out} ({spec.quantization}, {spec.input_size}px -> {spec.embedding_dim}d, sha256 {spec.fingerprint[:16]}…)"
    )
    click.echo("parity: " + ", ".join(f"{k}={v:.4f}" for k, v in spec.parity.items()))


COMMANDS = [convert_command]
