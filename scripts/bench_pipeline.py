#!/usr/bin/env python3
"""`shelfsight eval` figures, global embedding vs the kiosk's full pipeline (issue 3).

Settings:
  grocery_train  Grocery Store val photos vs a catalog of its train photos
  grocery_iconic val photos vs the aligned iconic images (one per product)
  iconic_warped  iconic image as catalog; rotated/tilted/scaled/relit renderings of it on clutter as queries
  grozi_warped   GroZi-120: 3 largest crops per product as catalog; 4 others rotated/tilted/scaled onto clutter
  packages_iconic        only the packaged products' val photos (cartons, juice, yoghurt) vs all iconic images
  packages_iconic_5k     the same with >= 5,000 distractor products added to the catalog
  iconic_warped_5k       iconic_warped with the same distractors
  iconic_warped_clean    iconic_warped with backgrounds of fruit/vegetable photos instead of catalog images
                         (a catalog image in the background is a real match, so calibrate on this one)
  iconic_warped_hard     iconic_warped_clean with a shopper's photo on top (warped_queries.HARD): the product
                         partly out of the frame, a hand over it, glare, blur, noise, JPEG 60
  iconic_warped_hard_5k  iconic_warped_hard with the distractors
  packages_warped_clean  iconic_warped_clean of the 31 packaged products only, catalog and queries: the
                         printed products the "not in catalog" target is about (calibrate on this one)

Distractor products (`*_5k`) are 6,216 images, one product each: every GroZi-120 crop (3,440) and
2,776 packages drawn by the demo's sample renderer (boxes, cartons, cans, pouches with text and
logos). None shows a product the queries show, so ranking one first is a wrong answer (no "same
product, other id" credit). Until this release the pool held the Grocery Store's train photos of
fruit and vegetables instead of 1,776 of the rendered ones; each shows a catalog product, so those
figures counted a warped apple that found a photo of that apple as wrong. The catalog build screens out
GroZi crops under 64 px, so the full pipeline's catalog holds fewer than the global one's; both
counts are in the JSON.

For each: R@1, R@5, MAP@R, query p50/p95 ms with `ranker=None` (global) and
with `PipelineRanker` (full: catalog build with ORB keypoints, shortlist,
verification, scoring), plus `--calibrate --pipeline full` on one setting.
Warped sets are generated with a fixed seed (scripts/warped_queries.py).
`--max-per-product` subsamples queries deterministically (first N by name).

    .venv/bin/python scripts/bench_pipeline.py --grocery ../shared/datasets/grocery-store \
        --grozi ../shared/datasets/grozi-120 --out runs/bench_pipeline.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import iconic_catalog  # noqa: E402
from benchinfo import write_report  # noqa: E402
from warped_queries import HARD, grozi_set, iconic_set, link  # noqa: E402

from shelfsight.edge_app.core.images import iter_image_files  # noqa: E402
from shelfsight.edge_app.core.labels import scan_folder  # noqa: E402
from shelfsight.edge_app.demo.samples import generate_sample_set  # noqa: E402
from shelfsight.edge_app.evaluation.pipeline import PipelineRanker, calibrate  # noqa: E402
from shelfsight.edge_app.evaluation.retrieval import evaluate  # noqa: E402
from shelfsight.edge_app.runtime.factory import open_embedder  # noqa: E402

log = logging.getLogger("bench_pipeline")

FIGURES = ("recall_at_1", "recall_at_5", "map_at_r", "queries", "products", "query_ms_p50", "query_ms_p95")


def subsample(folder: Path, out: Path, per_product: int) -> Path:
    """The first `per_product` images (by name) of each product folder, as symlinks."""
    by_product: dict[Path, list[Path]] = {}
    for path in iter_image_files(folder):
        by_product.setdefault(path.parent, []).append(path)
    for parent, paths in by_product.items():
        for path in sorted(paths)[:per_product]:
            link(path, out / parent.relative_to(folder) / path.name)
    return out


def packaged_queries(val: Path, out: Path) -> Path:
    """The val photos under Packages/ only (the printed products), keyed like the iconic catalog."""
    for path in iter_image_files(val / "Packages"):
        link(path, out / "Packages" / path.relative_to(val / "Packages"))
    return out


def clean_clutter(grocery: Path) -> list[Path]:
    """Background images that show no catalog product: the val photos of fruit and vegetables, by name."""
    photos = [p for group in ("Fruit", "Vegetables") for p in iter_image_files(grocery / "val" / group)]
    return sorted(photos, key=lambda p: p.name)


def with_distractors(catalog: Path, pool: list[Path], out: Path) -> Path:
    """`catalog` plus one product per image of `pool` (ids `zz-distractor/NNNNN`), as symlinks."""
    for path in iter_image_files(catalog):
        link(path, out / path.relative_to(catalog))
    for i, path in enumerate(pool):
        link(path, out / "zz-distractor" / f"{i:05d}" / path.name)
    return out


def distractor_pool(grozi: Path | None, rendered: Path, size: int = 6216) -> list[Path]:
    """`size` one-image products that are none of the Grocery Store's 81: GroZi-120 crops, then rendered packages.

    Not the Grocery Store's own photos: each shows one of the catalog's products (its fruit and
    vegetable photos are what the warped sets' apples and peppers are), so a query "losing" to one
    of them under another id would be scored wrong for finding its own product.
    """
    pool = sorted(iter_image_files(grozi))[:size] if grozi is not None else []
    if len(pool) < size:
        drawn = generate_sample_set(
            rendered, n_products=size - len(pool), refs_per_product=1, queries_per_product=0, seed=7
        )
        pool += sorted(iter_image_files(drawn.catalog_dir))
    return pool


def _label(ranker: PipelineRanker, product_id: str) -> str:
    return ranker.label(product_id)


def _print(label: str, f: dict[str, Any]) -> None:
    print(
        f"  {label:15s} R@1 {f['recall_at_1']:.4f}  R@5 {f['recall_at_5']:.4f}  MAP@R {f['map_at_r']:.4f}  "
        f"p50 {f['query_ms_p50']:.1f} ms  p95 {f['query_ms_p95']:.1f} ms  "
        f"({f['queries']} queries, {f['products']} products, {f['seconds']} s)",
        flush=True,
    )


def _figures(result: Any, started: float) -> dict[str, Any]:
    return {k: getattr(result, k) for k in FIGURES} | {"seconds": round(time.perf_counter() - started, 1)}


def run_setting(embedder: Any, catalog: Path, queries: Path, pipelines: list[str]) -> dict[str, Any]:
    """Figures per pipeline. The full pipeline's catalog build screens references (too small, blurry,
    duplicate); when that leaves products without any, both pipelines are also scored on the products
    that kept a reference ("*_screened"), so the comparison is not only about the screening."""
    row: dict[str, Any] = {"catalog": str(catalog), "queries": str(queries)}
    kept: set[str] | None = None
    for pipeline in pipelines:
        started = time.perf_counter()
        if pipeline != "full":
            row[pipeline] = _figures(evaluate(embedder, catalog, queries), started)
            _print(pipeline, row[pipeline])
            continue
        references = scan_folder(catalog, "catalog")
        ranker = PipelineRanker(embedder, references)
        try:
            used = ranker.catalog.references()
            kept = {_label(ranker, r["product_id"]) for r in used}
            row["full_catalog"] = {
                "build_s": round(time.perf_counter() - started, 1),
                "references_used": len(used),
                "references": len(references.paths),
                "products_with_references": len(kept),
                "products": len(set(references.products)),
            }
            print(
                f"  full catalog: {len(used)}/{len(references.paths)} references kept by screening, "
                f"{len(kept)}/{len(set(references.products))} products have one",
                flush=True,
            )
            row["full"] = _figures(evaluate(embedder, catalog, queries, ranker=ranker), started)
            _print("full", row["full"])
            if len(kept) < len(set(references.products)):
                started = time.perf_counter()
                row["full_screened"] = _figures(
                    evaluate(embedder, catalog, queries, ranker=ranker, products=kept), started
                )
                _print("full_screened", row["full_screened"])
        finally:
            ranker.close()
        if kept is not None and "full_screened" in row and "global" in pipelines:
            started = time.perf_counter()
            row["global_screened"] = _figures(evaluate(embedder, catalog, queries, products=kept), started)
            _print("global_screened", row["global_screened"])
    return row


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("edge_app/assets/default_model.tflite"))
    parser.add_argument("--grocery", type=Path, help="Grocery Store dataset root")
    parser.add_argument("--grozi", type=Path, help="GroZi-120 root (product-NNN/*.jpg)")
    parser.add_argument("--settings", default="grocery_train,grocery_iconic,iconic_warped,grozi_warped")
    parser.add_argument("--pipelines", default="global,full")
    parser.add_argument(
        "--max-per-product",
        type=int,
        default=0,
        help="Use only the first N queries of each product (0: all) for the photo settings",
    )
    parser.add_argument(
        "--calibrate", default="iconic_warped", help="Setting to calibrate with --pipeline full ('' to skip)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_pipeline.json"))
    parser.add_argument(
        "--workdir",
        type=Path,
        help="Keep the generated sets here (default: a temporary folder), e.g. to run `shelfsight eval` on them",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    wanted = [s for s in args.settings.split(",") if s]
    work: tempfile.TemporaryDirectory[str] | None = None  # removed when main() returns
    if args.workdir:
        if args.workdir.exists() and any(args.workdir.iterdir()):
            parser.error(f"--workdir {args.workdir} is not empty")
        tmp = args.workdir
    else:
        work = tempfile.TemporaryDirectory(prefix="bench-pipeline-")
        tmp = Path(work.name)
    settings: dict[str, tuple[Path, Path]] = {}
    if args.grocery:
        val = args.grocery / "val"
        if args.max_per_product:
            val = subsample(val, tmp / "val", args.max_per_product)
        iconic = iconic_catalog(args.grocery, tmp / "iconic")
        settings["grocery_train"] = (args.grocery / "train", val)
        settings["grocery_iconic"] = (iconic, val)
        if "iconic_warped" in wanted or "iconic_warped_5k" in wanted:
            settings["iconic_warped"] = (iconic, iconic_set(iconic, tmp / "iconic_warped", seed=args.seed))
        settings["packages_iconic"] = (iconic, packaged_queries(val, tmp / "packages"))
        if "iconic_warped_clean" in wanted:
            # Backgrounds from fruit and vegetable photos, no catalog image: the set to calibrate on.
            queries = iconic_set(
                iconic, tmp / "iconic_warped_clean", seed=args.seed, clutter_from=clean_clutter(args.grocery)
            )
            settings["iconic_warped_clean"] = (iconic, queries)
        if "packages_warped_clean" in wanted:
            # The printed products alone, the catalog the unknown-product target is about: a held-out
            # apple looks like the catalog's other apples to any embedding, and nothing verifies fruit.
            queries = iconic_set(
                iconic / "Packages",
                tmp / "packages_warped_clean",
                seed=args.seed,
                clutter_from=clean_clutter(args.grocery),
            )
            settings["packages_warped_clean"] = (iconic / "Packages", queries)
        if "iconic_warped_hard" in wanted or "iconic_warped_hard_5k" in wanted:
            queries = iconic_set(
                iconic,
                tmp / "iconic_warped_hard",
                seed=args.seed,
                clutter_from=clean_clutter(args.grocery),
                params=HARD,
            )
            settings["iconic_warped_hard"] = (iconic, queries)
        if any(name.endswith("_5k") for name in wanted):
            pool = distractor_pool(args.grozi, tmp / "rendered")
            crowded = with_distractors(iconic, pool, tmp / "iconic_5k")
            print(f"distractors: {len(pool)} one-image products", flush=True)
            settings["packages_iconic_5k"] = (crowded, settings["packages_iconic"][1])
            if "iconic_warped" in settings:
                settings["iconic_warped_5k"] = (crowded, settings["iconic_warped"][1])
            if "iconic_warped_hard" in settings:
                settings["iconic_warped_hard_5k"] = (crowded, settings["iconic_warped_hard"][1])
    if args.grozi and "grozi_warped" in wanted:
        settings["grozi_warped"] = grozi_set(args.grozi, tmp / "grozi", seed=args.seed)

    out: dict[str, Any] = {
        "model": str(args.model),
        "threads": args.threads,
        "load_average_start": load_average(),
        "settings": {},
    }
    with open_embedder(args.model, threads=args.threads) as embedder:
        out["model_fingerprint"] = embedder.fingerprint
        for name in wanted:
            if name not in settings:
                log.warning("setting %s skipped: its dataset was not given", name)
                continue
            print(f"{name}:", flush=True)
            out["settings"][name] = run_setting(embedder, *settings[name], args.pipelines.split(","))
        if args.calibrate in settings:
            started = time.perf_counter()
            cal = calibrate(embedder, *settings[args.calibrate], pipeline="full", seed=args.seed)
            out["calibration"] = {
                "setting": args.calibrate,
                **cal.to_dict(),
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(
                f"calibrate --pipeline full on {args.calibrate}: threshold {cal.threshold:.4f}  known answered right "
                f"{cal.known_accept_rate:.4f}  held-out refused {cal.unknown_reject_rate:.4f}  "
                f"({cal.known_queries} known / {cal.unknown_queries} unknown queries)",
                flush=True,
            )
            at_target = max((p for p in cal.curve if p[2] <= 0.05), key=lambda p: p[1], default=None)
            out["calibration"]["best_at_5pct_announced"] = at_target
            if at_target is not None:
                print(
                    f"  on the curve, at most 5% of held-out queries announced: threshold {at_target[0]:.4f}  "
                    f"known answered right {at_target[1]:.4f}  held-out announced {at_target[2]:.4f}",
                    flush=True,
                )
    out["load_average_end"] = load_average()

    print(f"\n{'setting':15s} {'pipeline':15s} {'R@1':>7s} {'R@5':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'queries':>8s}")
    for name, row in out["settings"].items():
        for pipeline in ("global", "full", "global_screened", "full_screened"):
            if pipeline in row:
                f = row[pipeline]
                print(
                    f"{name:15s} {pipeline:15s} {f['recall_at_1']:7.4f} {f['recall_at_5']:7.4f} "
                    f"{f['query_ms_p50']:8.1f} {f['query_ms_p95']:8.1f} {f['queries']:8d}"
                )
    write_report(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
