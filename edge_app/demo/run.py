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

import logging
import os
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import click
import numpy as np

from shelfsight.edge_app.camera import (
    Frame,
    FrameSource,
    OpenCVSource,
    ReconnectingSource,
    VideoFileSource,
)
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.demo.samples import (
    Clip,
    generate_clip,
    generate_sample_set,
    load_clip_truth,
    load_sample_set,
)
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer, TemporalVoter
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- catalog from folders


def build_sample_catalog(
    catalog_path: Path, references_dir: Path, products_csv: Path | None, embedder: Embedder
) -> Any:
    """Build a new demo catalog (replacing any file there) from an ImageFolder of reference photos and a products CSV; open it.

    Uses the catalog's own ingestion (quality checks, dedupe, all-or-nothing file replacement,
    a thumbnail for each product from its sharpest reference, for the kiosk's product card).
    """
    from shelfsight.catalog.ingest import build_catalog, collect_entries
    from shelfsight.catalog.store import Catalog

    for stale in (catalog_path, *(catalog_path.with_name(catalog_path.name + s) for s in ("-wal", "-shm"))):
        stale.unlink(missing_ok=True)  # a fresh build, not an extension of an earlier demo's catalog
    report = build_catalog(catalog_path, embedder, collect_entries(references_dir, products_csv))
    for line in report.lines():
        log.info("%s", line)
    return Catalog(catalog_path, create=False)


# --------------------------------------------------------------------------- playing a clip


@dataclass
class SecondReport:
    second: int
    truth: str | None  # what the clip's ground truth says (None: nothing / unknown)
    announced: str  # what the kiosk announced at the end of the second
    frames: Counter[str] = field(default_factory=Counter)  # per-frame decisions in the second
    # The right announcement: the truth, or "unknown" for a product the catalog does not have.
    expected: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.expected is None else self.announced == self.expected


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
        """Share of the seconds with a product in view whose announcement names that product."""
        shown = [s for s in self.seconds if s.correct is not None]
        return sum(bool(s.correct) for s in shown) / len(shown) if shown else None


def _label(decision: str, product_id: str | None) -> str:
    return product_id if decision == "product" and product_id else decision


def play(kiosk: Kiosk, frames: Iterable[Frame], fps: float, truth: Clip | None = None) -> PlayReport:
    """Feed frames (as if at `fps`) through the kiosk's recognizer and voter; summarise per second.

    A product of the clip's truth that the catalog does not have is answered correctly by "unknown".
    """
    known = {p["id"] for p in kiosk.recognizer.catalog.products()} if truth else set()
    seconds: dict[int, SecondReport] = {}
    stage: dict[str, list[float]] = {}
    start = time.perf_counter()
    n = 0
    for n, frame in enumerate(frames, start=1):
        t = (n - 1) / fps
        state = kiosk.process(frame)
        sec = int(t)
        if sec not in seconds:
            shown = truth.product_at(sec + 0.5) if truth else None
            expected = None if shown is None else shown if shown in known else "unknown"
            seconds[sec] = SecondReport(sec, shown, "-", expected=expected)
        report = seconds[sec]
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
    from shelfsight.edge_app.kiosk.sources import resolve_model

    return resolve_model(model)


def _evaluate(embedder: Embedder, catalog_dir: Path, queries_dir: Path) -> dict[str, Any] | None:
    """Retrieval quality of the model on the sample queries (the lead's `edge_app.evaluate`)."""
    try:
        from shelfsight.edge_app.evaluation.retrieval import evaluate  # type: ignore[import-not-found]
    except ImportError:
        log.warning("edge_app.evaluate is not available yet; skipping the model evaluation")
        return None
    result = evaluate(embedder, catalog_dir, queries_dir)
    return {"recall@1": result.recall_at_1, "recall@5": result.recall_at_5}


def _echo_report(report: PlayReport, names: dict[str, str]) -> None:
    def show(label: str | None) -> str:
        return "(nothing)" if label in (None, "-") else f"{label} {names.get(str(label), '')}".strip()

    click.echo(f"{'second':>6}  {'kiosk announced':<28} {'in front of the camera':<28} frames")
    for s in report.seconds:
        frames = ", ".join(f"{k}×{v}" for k, v in s.frames.most_common(3))
        mark = "" if s.correct is None else ("  ok" if s.correct else "  --")
        click.echo(f"{s.second:>6}  {show(s.announced):<28} {show(s.truth):<28} {frames}{mark}")


def run_demo(
    workdir: Path | None,
    model: Path | None,
    catalog_dir: Path | None,
    products: Path | None,
    queries: Path | None,
    clip: Path | None,
    threads: int = 2,
    global_only: bool = False,
    serve: bool = False,
    port: int = 8080,
    camera: str | None = None,
    seconds: float = 0,
) -> PlayReport:
    from shelfsight.edge_app.runtime.factory import open_embedder

    workdir = workdir or default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    if catalog_dir is None:
        t = time.perf_counter()
        sample = load_sample_set(workdir / "samples")
        if sample is None:
            sample = generate_sample_set(workdir / "samples")
            generate_clip(workdir / "samples" / "clip.avi", sample)
            click.echo(
                f"rendered {sample.n_products} sample products and their clip in {time.perf_counter() - t:.1f} s"
            )
        catalog_dir, products, queries = sample.catalog_dir, sample.products_csv, queries or sample.queries_dir
        clip = clip or (workdir / "samples" / "clip.avi" if camera is None else None)
        click.echo(f"sample products: {sample.root}")
    model_path = _resolve_model(model)
    with open_embedder(model_path, threads=threads) as embedder:
        click.echo(
            f"model {model_path.name}: {embedder.input_size}px -> {embedder.dim}-d, fingerprint {embedder.fingerprint[:12]}"
        )
        if queries is not None:
            metrics = _evaluate(embedder, catalog_dir, queries)
            if metrics is not None:
                click.echo(
                    "retrieval on the sample queries (global embeddings): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
                )
        t = time.perf_counter()
        catalog = build_sample_catalog(workdir / "catalog.db", catalog_dir, products, embedder)
        stats = catalog.stats()
        click.echo(
            f"catalog: {stats.get('products')} products, {stats.get('references')} references "
            f"in {time.perf_counter() - t:.1f} s -> {workdir / 'catalog.db'}"
        )
        try:
            config = RecognitionConfig(verify=not global_only)
            recognizer = Recognizer(embedder, catalog, config, RoiConfig())
            kiosk = Kiosk(recognizer, None, TemporalVoter.from_config(config))
            report = _play_clip(kiosk, clip) if clip is not None and camera is None else None
            if report is not None:
                names = {p["id"]: p["name"] for p in catalog.products()}
                _echo_report(report, names)
                acc = report.accuracy()
                click.echo(
                    f"{report.frames} frames in {report.wall_s:.1f} s ({report.fps:.1f} fps); per-frame median ms: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_ms.items())
                )
                if acc is not None:
                    click.echo(
                        f"seconds with a product shown that the kiosk announced correctly "
                        f'("unknown" for one not in the catalog): {acc:.0%}'
                    )
            if camera is not None or serve:
                live: FrameSource
                if camera is not None and Path(camera).is_file():  # a recording: play it at its own pace
                    live = VideoFileSource(Path(camera), loop=True, realtime=True)
                elif camera is not None:
                    device: int | str = int(camera) if camera.isdigit() else camera
                    live = ReconnectingSource(partial(OpenCVSource, device))
                elif clip is not None:
                    live = VideoFileSource(clip, loop=True, realtime=True)
                else:
                    raise InputError("--serve needs a clip or a --camera to show")
                click.echo(f"live from {live.name if camera is None else camera}:")
                run_live(recognizer, live, seconds, serve, port)
        finally:
            catalog.close()
    return report if report is not None else PlayReport([], 0, 0.0, {})


def _play_clip(kiosk: Kiosk, clip: Path) -> PlayReport:
    with VideoFileSource(clip, loop=False, realtime=False) as source:
        fps = source.fps or 10.0
        truth = load_clip_truth(clip) if clip.with_suffix(".json").is_file() else None

        def frames() -> Iterable[Frame]:
            while (frame := source.read()) is not None:
                yield frame

        return play(kiosk, frames(), fps, truth)


def run_live(recognizer: Recognizer, source: FrameSource, seconds: float, serve: bool, port: int) -> list[str]:
    """Run the kiosk threads on a live source, printing what is announced each second.

    Stops after `seconds` (0: until Ctrl-C). Returns the printed announcements.
    """
    from shelfsight.edge_app.web.app import WebServer, create_app

    names: dict[str, str] = {}
    lines: list[str] = []
    with ExitStack() as running:
        kiosk = running.enter_context(Kiosk(recognizer, source))
        if serve:
            server = running.enter_context(WebServer(create_app(kiosk), "127.0.0.1", port))
            click.echo(f"serving the kiosk page at {server.url} (Ctrl-C to stop)")
        started = time.monotonic()
        try:
            while not seconds or time.monotonic() - started < seconds:
                time.sleep(1.0)
                ann = kiosk.state().announcement
                label = _label(ann.decision, ann.product_id)
                if ann.product_id and ann.product_id not in names:
                    names[ann.product_id] = str(kiosk.product_info(ann.product_id).get("name", ""))
                camera = kiosk.camera_status() or {}
                line = f"{time.monotonic() - started:6.0f}s  {label} {names.get(label, '')}".rstrip()
                if not camera.get("connected", True):
                    line += f"  (camera: {camera.get('error') or 'connecting'})"
                lines.append(line)
                click.echo(line)
                if kiosk.source_ended.is_set():
                    break
        except KeyboardInterrupt:
            click.echo("stopped")
    return lines
