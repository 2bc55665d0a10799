#!/usr/bin/env python3
"""Retrieval benchmark on the Grocery Store dataset (issue 2).

Queries: the `val` photos. Catalogs: (a) the `train` photos, (b) the one iconic
web-shop image per product. Models: the off-the-shelf ImageNet backbone, the
fine-tuned float model and its int8 TFLite export. Optionally a
product-disjoint check: a run trained without some products, evaluated on
those products only.

Usage:
  .venv/bin/python scripts/bench_retrieval.py --data ../shared/datasets/grocery-store \
      --run runs/default --int8 edge_app/assets/default_model.tflite --json out/bench_retrieval.json \
      [--disjoint-run runs/disjoint --disjoint-products runs/disjoint/held_out.txt]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import write_report  # noqa: E402

from shelfsight.edge_app.evaluation.retrieval import evaluate  # noqa: E402
from shelfsight.edge_app.runtime.factory import open_embedder  # noqa: E402


def iconic_catalog(data: Path, out: Path) -> Path:
    """The iconic images as an ImageFolder keyed like the photos (the dataset files one under another folder)."""
    from shelfsight.train.data import grocery_iconic

    for sample in grocery_iconic(data / "classes.csv"):
        folder = out / sample.product
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sample.path.name).symlink_to(sample.path.resolve())
    return out


def figures(result) -> dict:
    keys = ("recall_at_1", "recall_at_5", "map_at_r", "queries", "products", "query_ms_p50", "query_ms_p95")
    return {k: getattr(result, k) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="Grocery Store dataset root")
    parser.add_argument("--run", type=Path, help="fine-tuned training run directory (float model)")
    parser.add_argument("--int8", type=Path, help="int8 .tflite export of that run")
    parser.add_argument(
        "--baseline/--no-baseline", dest="baseline", default=True, action=argparse.BooleanOptionalAction
    )
    parser.add_argument("--disjoint-run", type=Path, help="run trained without the held-out products")
    parser.add_argument("--disjoint-products", type=Path, help="file listing the held-out product ids")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    aligned = tempfile.TemporaryDirectory(prefix="iconic-")
    catalogs = {"train_photos": args.data / "train", "iconic": iconic_catalog(args.data, Path(aligned.name))}
    queries = args.data / "val"
    models = {}
    if args.baseline:
        from shelfsight.train.keras_embedder import KerasEmbedder
        from shelfsight.train.model import imagenet_embedding_model

        models["imagenet_backbone"] = lambda: KerasEmbedder(model=imagenet_embedding_model(224))
    if args.run:
        models["finetuned_float"] = lambda: open_embedder(args.run)
    if args.int8:
        models["finetuned_int8"] = lambda: open_embedder(args.int8, threads=2)

    out: dict = {"queries_folder": str(queries), "results": {}}
    for name, make in models.items():
        with make() as embedder:
            for catalog_name, catalog in catalogs.items():
                started = time.time()
                result = evaluate(embedder, catalog, queries)
                row = figures(result) | {"seconds": round(time.time() - started, 1)}
                out["results"][f"{name}/{catalog_name}"] = row
                print(
                    f"{name:18s} {catalog_name:13s} R@1 {row['recall_at_1']:.4f}  R@5 {row['recall_at_5']:.4f}  "
                    f"MAP@R {row['map_at_r']:.4f}  ({row['queries']} queries, {row['products']} products)",
                    flush=True,
                )

    if args.disjoint_run and args.disjoint_products:
        held_out = [line.strip() for line in args.disjoint_products.read_text().splitlines() if line.strip()]
        out["disjoint_products"] = held_out
        contenders = {"disjoint_finetuned_float": lambda: open_embedder(args.disjoint_run)}
        if args.baseline:
            contenders["imagenet_backbone"] = models["imagenet_backbone"]
        for name, make in contenders.items():
            with make() as embedder:
                for catalog_name, catalog in catalogs.items():
                    result = evaluate(embedder, catalog, queries, products=held_out)
                    row = figures(result)
                    out["results"][f"held_out/{name}/{catalog_name}"] = row
                    print(
                        f"held-out {name:26s} {catalog_name:13s} R@1 {row['recall_at_1']:.4f}  "
                        f"R@5 {row['recall_at_5']:.4f}  ({row['queries']} queries, {row['products']} products)",
                        flush=True,
                    )
    write_report(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
