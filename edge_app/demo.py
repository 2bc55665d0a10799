"""`shelfsight demo`: the whole edge pipeline on the built-in rendered products, in under a minute.

With no arguments: render the sample product set and its kiosk clip into a
cache folder, check the default model, evaluate it on the sample queries,
build a catalog, play the clip through the kiosk pipeline (ROI, embedding,
shortlist, geometric verification, temporal voting) and print what the kiosk
announced each second next to what was really in front of the camera.
`--serve` then keeps serving the kiosk page on the looping clip.

With arguments it runs the same on real data: `--catalog-dir` (ImageFolder of
reference photos), `--products` (CSV), `--clip` (a video file) or `--queries`.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import click
import numpy as np

from edge_app.camera import VideoFileSource
from edge_app.config import RecognitionConfig, RoiConfig
from edge_app.errors import CatalogError, ImageError, InputError
from edge_app.images import fit_square, iter_image_files, load_rgb
from edge_app.kiosk import Kiosk, encode_jpeg
from edge_app.recognition import Recognizer, TemporalVoter
from edge_app.runtime import Embedder
from edge_app.samples import Clip, generate_clip, generate_sample_set, load_clip_truth

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 160


# --------------------------------------------------------------------------- catalog from folders


def read_products_csv(path: Path) -> dict[str, dict[str, Any]]:
    """sku -> product fields from a CSV with columns sku,name[,description,category,price]."""
    if not path.is_file():
        raise InputError(f"{path}: no such products CSV")
    products: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"sku", "name"} <= set(reader.fieldnames):
            raise InputError(f"{path}: needs at least the columns sku,name (has {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            sku = (row.get("sku") or "").strip()
            if not sku:
                raise InputError(f"{path}:{line}: empty sku")
            price = (row.get("price") or "").strip()
            try:
                products[sku] = {
                    "name": (row.get("name") or sku).strip(),
                    "description": (row.get("description") or "").strip(),
                    "category": (row.get("category") or "").strip(),
                    "price": float(price) if price else None,
                }
            except ValueError as exc:
                raise InputError(f"{path}:{line}: bad price {price!r}") from exc
    return products


def build_catalog(
    catalog_path: Path, references_dir: Path, products_csv: Path | None, embedder: Embedder
) -> Any:
    """A fresh catalog from an ImageFolder of reference photos (subfolder = product id) and a products CSV.

    Unreadable or unusable photos are skipped with a warning; a product left
    with no reference is an error that names it.
    """
    from catalog.store import Catalog

    products = read_products_csv(products_csv) if products_csv is not None else {}
    folders = sorted(p for p in Path(references_dir).iterdir() if p.is_dir()) if Path(references_dir).is_dir() else []
    if not folders:
        raise InputError(f"{references_dir}: no product subfolders of reference images")
    if catalog_path.exists():
        catalog_path.unlink()
    catalog = Catalog(catalog_path)
    try:
        with catalog.batch():
            for folder in folders:
                _add_product(catalog, folder, products.get(folder.name, {"name": folder.name}), embedder)
    except Exception:
        catalog.close()
        raise
    return catalog


def _add_product(catalog: Any, folder: Path, fields: dict[str, Any], embedder: Embedder) -> None:
    images: list[np.ndarray] = []
    for path in iter_image_files(folder):
        try:
            images.append(load_rgb(path))
        except (ImageError, InputError) as exc:
            log.warning("skipping reference %s", exc)
    if not images:
        raise InputError(f"{folder}: no readable reference images for product {folder.name!r}")
    thumbnail = encode_jpeg(fit_square(images[0], THUMBNAIL_SIDE), 85)
    catalog.add_product(folder.name, fields.get("name") or folder.name, thumbnail=thumbnail,
                        **{k: v for k, v in fields.items() if k != "name" and v is not None})
    for i, rgb in enumerate(images):
        catalog.add_reference(folder.name, rgb, embedder, source=f"{folder.name}/{i}")


# --------------------------------------------------------------------------- playing a clip


@dataclass
class SecondReport:
    second: int
    truth: str | None  # what the clip's ground truth says (None: nothing / unknown)
    announced: str  # what the kiosk announced at the end of the second
    frames: Counter[str] = field(default_factory=Counter)  # per-frame decisions in the second


@dataclass
class PlayReport:
    seconds: list[SecondReport]
    frames: int
    wall_s: float
    stage_ms: dict[str, float]  # median per stage

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def accuracy(self) -> float | None:
        """Share of seconds (with ground truth) whose announcement matches what was shown."""
        judged = [s for s in self.seconds if s.truth is not None or s.announced in ("empty", "-")]
        scored = [s for s in self.seconds if s.truth is not None]
        if not scored and not judged:
            return None
        correct = sum(1 for s in scored if s.announced == s.truth)
        return correct / len(scored) if scored else None


def _label(decision: str, product_id: str | None) -> str:
    return product_id if decision == "product" and product_id else decision


def play(kiosk: Kiosk, frames: Iterable[np.ndarray], fps: float, truth: Clip | None = None) -> PlayReport:
    """Feed frames (as if at `fps`) through the kiosk's recognizer and voter; summarise per second."""
    from edge_app.camera import Frame

    seconds: dict[int, SecondReport] = {}
    stage: dict[str, list[float]] = {}
    start = time.perf_counter()
    n = 0
    for n, rgb in enumerate(frames, start=1):
        t = (n - 1) / fps
        state = kiosk.process(Frame(rgb, t, n))
        sec = int(t)
        report = seconds.setdefault(sec, SecondReport(sec, truth.product_at(sec + 0.5) if truth else None, "-"))
        if state.frame is not None:
            report.frames[_label(state.frame.decision, state.frame.product_id)] += 1
            for key, value in state.frame.timings.items():
                stage.setdefault(key, []).append(value)
        report.announced = _label(state.announcement.decision, state.announcement.product_id)
    wall = time.perf_counter() - start
    medians = {k: float(np.median(v)) for k, v in stage.items()}
    return PlayReport([seconds[k] for k in sorted(seconds)], n, wall, medians)


# --------------------------------------------------------------------------- the command


def default_workdir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "shelfsight" / "demo"


def _resolve_model(model: Path | None) -> Path:
    from edge_app.kiosk import resolve_model

    return resolve_model(model)


def _evaluate(embedder: Embedder, catalog_dir: Path, queries_dir: Path) -> dict[str, Any] | None:
    """Retrieval quality of the model on the sample queries (the lead's `edge_app.evaluate`)."""
    try:
        from edge_app.evaluate import evaluate  # type: ignore[import-not-found]
    except ImportError:
        log.warning("edge_app.evaluate is not available yet; skipping the model evaluation")
        return None
    result = evaluate(embedder, catalog_dir, queries_dir)
    return dict(result.to_dict())


def _echo_report(report: PlayReport, names: dict[str, str]) -> None:
    def show(label: str | None) -> str:
        if label is None:
            return "(nothing)"
        return f"{label} {names.get(label, '')}".strip()

    click.echo(f"{'second':>6}  {'kiosk announced':<28} {'in front of the camera':<28} frames")
    for s in report.seconds:
        frames = ", ".join(f"{k}×{v}" for k, v in s.frames.most_common(3))
        mark = "" if s.truth is None and s.announced in ("empty", "-", "starting") else (
            "  ok" if s.announced == s.truth else ("  --" if s.truth is not None else "")
        )
        click.echo(f"{s.second:>6}  {show(s.announced if s.announced not in ('-',) else None):<28} {show(s.truth):<28} {frames}{mark}")


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Where sample data and the catalog go (default: ~/.cache/shelfsight/demo).")
@click.option("--model", type=click.Path(path_type=Path, dir_okay=False), default=None, help="A .tflite embedder (default: the bundled model).")
@click.option("--catalog-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="ImageFolder of reference photos (default: the built-in products).")
@click.option("--products", type=click.Path(path_type=Path, dir_okay=False), default=None, help="products.csv (sku,name,description,category,price) for --catalog-dir.")
@click.option("--queries", type=click.Path(path_type=Path, file_okay=False), default=None, help="ImageFolder of query photos to evaluate on.")
@click.option("--clip", type=click.Path(path_type=Path, dir_okay=False), default=None, help="A video to play through the kiosk (default: the built-in clip).")
@click.option("--threads", type=int, default=2, show_default=True, help="Interpreter threads.")
@click.option("--global-only", is_flag=True, help="Skip geometric verification (the 'global' pipeline).")
@click.option("--serve", is_flag=True, help="Afterwards keep serving the kiosk page on the looping clip.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the kiosk page with --serve.")
def demo_command(
    workdir: Path | None, model: Path | None, catalog_dir: Path | None, products: Path | None, queries: Path | None,
    clip: Path | None, threads: int, global_only: bool, serve: bool, port: int,
) -> None:
    """Run the edge pipeline end to end on built-in rendered products (or on your folders).

    \b
    Examples:
      shelfsight demo
      shelfsight demo --serve --port 8080
      shelfsight demo --catalog-dir refs/ --products products.csv --clip shelf.mp4
    """
    from edge_app.cli import domain_errors

    domain_errors(run_demo)(workdir, model, catalog_dir, products, queries, clip, threads, global_only, serve, port)


def run_demo(
    workdir: Path | None, model: Path | None, catalog_dir: Path | None, products: Path | None, queries: Path | None,
    clip: Path | None, threads: int = 2, global_only: bool = False, serve: bool = False, port: int = 8080,
) -> PlayReport:
    from edge_app.runtime import open_embedder

    workdir = workdir or default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    truth: Clip | None = None
    if catalog_dir is None:
        t = time.perf_counter()
        sample = generate_sample_set(workdir / "samples")
        catalog_dir, products, queries = sample.catalog_dir, sample.products_csv, queries or sample.queries_dir
        if clip is None:
            truth = generate_clip(workdir / "samples" / "clip.avi", sample)
            clip = truth.path
        click.echo(f"rendered {sample.n_products} sample products and a {truth.segments[-1].end_s if truth else 0:.0f} s clip "
                   f"in {time.perf_counter() - t:.1f} s -> {sample.root}")
    elif clip is not None and clip.with_suffix(".json").is_file():
        truth = load_clip_truth(clip)
    model_path = _resolve_model(model)
    with open_embedder(model_path, threads=threads) as embedder:
        click.echo(f"model {model_path.name}: {embedder.input_size}px -> {embedder.dim}-d, fingerprint {embedder.fingerprint[:12]}")
        if queries is not None:
            metrics = _evaluate(embedder, catalog_dir, queries)
            if metrics is not None:
                click.echo("evaluation: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        t = time.perf_counter()
        catalog = build_catalog(workdir / "catalog.db", catalog_dir, products, embedder)
        stats = catalog.stats()
        click.echo(f"catalog: {stats.get('products')} products, {stats.get('references')} references "
                   f"in {time.perf_counter() - t:.1f} s -> {workdir / 'catalog.db'}")
        try:
            config = RecognitionConfig(verify=not global_only)
            recognizer = Recognizer(embedder, catalog, config, RoiConfig())
            kiosk = Kiosk(recognizer, None, TemporalVoter(config.vote_window, config.vote_min))
            report = _play_clip(kiosk, clip) if clip is not None else None
            if report is not None:
                names = {p["id"]: p["name"] for p in catalog.products()}
                _echo_report(report, names)
                acc = report.accuracy()
                click.echo(f"{report.frames} frames in {report.wall_s:.1f} s ({report.fps:.1f} fps); per-frame median ms: "
                           + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_ms.items()))
                if acc is not None:
                    click.echo(f"seconds with a product shown that the kiosk announced correctly: {acc:.0%}")
            if serve:
                if clip is None:
                    raise InputError("--serve needs a clip to play")
                _serve(recognizer, clip, port)
        finally:
            catalog.close()
    return report if report is not None else PlayReport([], 0, 0.0, {})


def _play_clip(kiosk: Kiosk, clip: Path) -> PlayReport:
    with VideoFileSource(clip, loop=False, realtime=False) as source:
        fps = source.fps or 10.0
        truth = load_clip_truth(clip) if clip.with_suffix(".json").is_file() else None

        def frames() -> Iterable[np.ndarray]:
            while (frame := source.read()) is not None:
                yield frame.rgb

        return play(kiosk, frames(), fps, truth)


def _serve(recognizer: Recognizer, clip: Path, port: int) -> None:
    from edge_app.web import WebServer, create_app

    kiosk = Kiosk(recognizer, VideoFileSource(clip, loop=True, realtime=True))
    with kiosk, WebServer(create_app(kiosk), "127.0.0.1", port) as server:
        click.echo(f"serving the kiosk page at {server.url} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            click.echo("stopped")


COMMANDS: list[click.Command] = [demo_command]
