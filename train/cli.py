"""`shelfsight train`: fine-tune the embedding model (workstation; needs the `train` extra)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import click

from shelfsight.edge_app.core.clitools import domain_errors
from shelfsight.edge_app.core.errors import InputError


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def prepare_tensorflow(command: str) -> None:
    """Refuse clearly on an install without TensorFlow (a kiosk); else silence its C++ start-up chatter."""
    if not tensorflow_available():
        raise InputError(
            f"`shelfsight {command}` needs TensorFlow, which the edge install leaves out: pip install 'shelfsight[train]'"
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _products_arg(value: str | None) -> list[str]:
    if not value:
        return []
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [v.strip() for v in value.split(",") if v.strip()]


def _augment_arg(items: tuple[str, ...]) -> dict[str, object]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError("missing '='")
            parsed[key.strip()] = json.loads(value)
        except ValueError as exc:
            raise click.BadParameter(f"{item!r}: expected KEY=JSON ({exc})", param_hint="--augment") from exc
    return parsed


@click.command("train")
@click.option(
    "--data",
    "sources",
    multiple=True,
    type=click.Path(exists=True),
    help="Image folder, Grocery Store list (.txt) or classes.csv (iconic images). Repeatable.",
)
@click.option(
    "--run-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where the model, config, log, checkpoints and manifest go. Re-run to resume.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A JSON training config; command-line options override it.",
)
@click.option("--epochs", type=int, help="Passes over the data (default 12).")
@click.option("--batch-size", type=int, help="Images per step (default 32).")
@click.option("--steps-per-epoch", type=int, help="Steps per epoch (default: one pass).")
@click.option("--input-size", type=int, help="Model input side in pixels (default 224).")
@click.option("--dim", "embedding_dim", type=int, help="Embedding dimension (default 256).")
@click.option("--backbone", type=click.Choice(["efficientnet-lite0", "tiny"]), help="Backbone network.")
@click.option("--train-from-block", type=int, help="Freeze backbone blocks below this one (default 4).")
@click.option("--learning-rate", type=float, help="Peak learning rate (default 4e-4).")
@click.option(
    "--exclude-products", help="Comma-separated product ids, or a file with one per line, left out of training."
)
@click.option(
    "--init-from",
    type=click.Path(exists=True),
    help="Start from this finished run's model (a second training stage), or from an exported "
    ".tflite with its sidecar (its weights are read back) when the run is gone.",
)
@click.option(
    "--augment",
    "augment_items",
    multiple=True,
    metavar="KEY=JSON",
    help="Override an augmentation setting, e.g. rotate_prob=0.5 or 'zoom_out=[0.7,1.0]'. Repeatable.",
)
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@domain_errors
def train_command(sources, run_dir, config_file, quiet, exclude_products, augment_items, **overrides) -> None:
    """Fine-tune the product embedding model with metric learning.

    \b
    Example:
      shelfsight train --run-dir runs/grocery \\
        --data ../shared/datasets/grocery-store/train.txt \\
        --data ../shared/datasets/grocery-store/classes.csv \\
        --data ../shared/datasets/grozi-120

    \b
    A gentler second stage, starting from the first:
      shelfsight train --run-dir runs/grocery-2 --init-from runs/grocery \\
        --data ../shared/datasets/grocery-store/train.txt --augment rotate_prob=0.5

    \b
    Continue from the shipped model (no Keras run needed):
      shelfsight train --run-dir runs/more --init-from edge_app/assets/default_model.tflite \
        --data ../shared/datasets/grocery-store/train.txt --learning-rate 1e-4
    """
    prepare_tensorflow("train")
    from shelfsight.train.config import TrainConfig
    from shelfsight.train.trainer import train

    cfg = TrainConfig.load(config_file) if config_file else TrainConfig()
    if sources:
        cfg.sources = [str(Path(s)) for s in sources]
    if exclude_products:
        cfg.exclude_products = _products_arg(exclude_products)
    if augment_items:
        cfg.augment = {**cfg.augment, **_augment_arg(augment_items)}
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    result = train(cfg.validate(), run_dir, verbose=0 if quiet else 1)
    final = result.manifest["metrics"]["final"]
    click.echo(f"model: {result.model_path}")
    click.echo("final: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))


@click.command("vocabulary")
@click.option("--data", "sources", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of training images (repeatable); not the catalog you will search.")  # fmt: skip
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .npz to write.")
@click.option("--branching", type=int, default=16, show_default=True, help="Children per tree node.")
@click.option("--depth", type=int, default=4, show_default=True, help="Tree levels (words = branching ** depth).")
@click.option("--per-image", type=int, default=300, show_default=True, help="Strongest descriptors kept per image.")
@click.option("--max-descriptors", type=int, default=300_000, show_default=True, help="Training sample size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling and clustering seed.")
@domain_errors
def vocabulary_command(
    sources: tuple[str, ...], out: Path, branching: int, depth: int, per_image: int, max_descriptors: int, seed: int
) -> None:
    """Train the visual vocabulary for the catalog's local-feature search (no TensorFlow needed).

    \b
    Example (the shipped default):
      shelfsight vocabulary --data ../shared/datasets/grocery-store/train \\
        --data ../shared/datasets/grozi-120 --out edge_app/assets/default_vocabulary.npz
    """
    from shelfsight.train.vocabulary import build_vocabulary

    vocabulary = build_vocabulary(
        sources, out, branching=branching, depth=depth, per_image=per_image, max_descriptors=max_descriptors, seed=seed
    )
    click.echo(f"{out}: {vocabulary.n_words} words, fingerprint {vocabulary.fingerprint[:12]}")


COMMANDS = [train_command, vocabulary_command]
