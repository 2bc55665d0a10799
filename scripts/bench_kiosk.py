#!/usr/bin/env python3
"""Kiosk latency benchmark: frame -> answer, stage by stage, for catalogs of 1k, 10k and 100k references.

For each catalog size it plays the built-in clip (rendered products held at
angles, with empty gaps) through the kiosk pipeline twice: "verified" (every
non-empty frame goes through geometric verification of the shortlist) and
"global" (verification not needed: embedding + search + decision only). It
reports p50/p95 per stage (capture/decode, preprocess, invoke, search,
verification, decision, their sum), the end-to-end time of each frame (one
clock around read + recognize, so nothing between the stages is missed),
frames per second, and the overhead of everything but the interpreter
(end-to-end minus invoke). The global run is repeated with the clip's frames
served from memory through the Pi camera source ("global_camera"): a camera
hands over raw pixels, so capture there is a channel swap, not a JPEG decode. A fresh subprocess measures cold start (model
+ catalog + embedding index + first answer, as the kiosk starts: `Catalog.start_index`),
when the visual-word index is ready and the first answer of the complete hybrid
pipeline, and resident memory at each size, once as is and once after emptying
the OS page cache where that is allowed (root on Linux), as after a boot.

The catalogs hold the rendered sample products (with real ORB keypoints) plus
filler products whose embeddings are random unit vectors and whose keypoints
are copies of real ones, so shortlists and verification cost what they would.
Catalogs are cached in --workdir.

Targets on 2 cores: frame->answer p50 <= 15 ms with verification at 1k;
everything but the invoke adds <= 30% when verification is not needed; RSS <=
300 MB and cold start <= 2 s at 100k references.

    python scripts/bench_kiosk.py --model model.tflite --out runs/bench_kiosk.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import host_reference, write_report  # noqa: E402

from shelfsight.edge_app.camera import VideoFileSource  # noqa: E402
from shelfsight.edge_app.camera.base import FrameSource  # noqa: E402
from shelfsight.edge_app.camera.picamera import PiCameraSource  # noqa: E402
from shelfsight.edge_app.demo.samples import generate_clip, generate_sample_set  # noqa: E402
from shelfsight.edge_app.recognition import Recognizer  # noqa: E402
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig  # noqa: E402
from shelfsight.edge_app.runtime.factory import open_embedder  # noqa: E402

# A "not in catalog" threshold as a store would calibrate it: printed products, at most 5% of held-out
# products' queries announced (pipeline_packages.json of 51346ec: 1.385; after MAGSAC++, 1.399).
STORE_THRESHOLD = 1.385

log = logging.getLogger("bench_kiosk")

STAGES = ("capture", "preprocess", "invoke", "search", "local", "verification", "decision")
FILLER_WORDS = 390  # distinct visual words of a filler: what the 400 indexed keypoints of a package give
FILLER_REFS_PER_PRODUCT = 3


def build_bench_catalog(path: Path, sample_root: Path, embedder: Any, n_refs: int, seed: int = 0) -> None:
    """Sample products (real references) + filler products up to `n_refs` references.

    Fillers have random embeddings and random visual words (no keypoints): they load, index and
    compete in both candidate sources like real references, and quantising 10^5 x 1,000 real
    descriptors would take minutes without changing what is timed.
    """
    from shelfsight.catalog.store import Catalog
    from shelfsight.catalog.word_index import encode_words
    from shelfsight.edge_app.demo.run import build_sample_catalog as build_sample

    tmp = path.with_name(path.name + ".tmp")
    for p in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-wal", "-shm"))):
        p.unlink(missing_ok=True)
    build_sample(tmp, sample_root / "catalog", sample_root / "products.csv", embedder).close()
    rng = np.random.default_rng(seed)
    with Catalog(tmp) as catalog:
        real = [r["id"] for r in catalog.references()]
        missing = n_refs - len(real)
        with catalog.batch():
            for i in range(max(0, missing)):
                product = f"F{i // FILLER_REFS_PER_PRODUCT:06d}"
                if i % FILLER_REFS_PER_PRODUCT == 0:
                    catalog.add_product(product, f"Filler {i // FILLER_REFS_PER_PRODUCT}", category="filler", price=1.0)
                vector = rng.standard_normal(embedder.dim).astype(np.float32)
                catalog.add_reference_vector(
                    product,
                    vector,
                    fingerprint=embedder.fingerprint,
                    phash="",
                    source=f"filler/{i}",
                    image_jpeg=None,
                    keypoints=None,
                )
            vocabulary = catalog.ensure_vocabulary()
            fillers = catalog.db.execute("SELECT id FROM reference_images WHERE source LIKE 'filler/%'").fetchall()
            for (reference_id,) in fillers:
                words = rng.choice(vocabulary.n_words, FILLER_WORDS, replace=False)
                catalog.db.execute(
                    "INSERT INTO reference_words (id, words) VALUES (?, ?)", [reference_id, encode_words(words)]
                )
    for suffix in ("-wal", "-shm"):
        tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
    tmp.rename(path)


def catalog_for(workdir: Path, sample_root: Path, embedder: Any, n_refs: int) -> Path:
    path = workdir / f"catalog_{n_refs}_{embedder.fingerprint[:12]}.db"
    if not path.is_file():
        started = time.perf_counter()
        build_bench_catalog(path, sample_root, embedder, n_refs)
        log.info("built %s in %.1f s", path.name, time.perf_counter() - started)
    return path


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0}
    return {"p50": round(float(np.percentile(values, 50)), 3), "p95": round(float(np.percentile(values, 95)), 3)}


class _ReplayCamera:
    """Hands out the clip's frames the way picamera2's `capture_array` does: BGR888 arrays in memory."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self.position = frames, 0

    def capture_array(self, name: str) -> np.ndarray:
        frame = self.frames[self.position % len(self.frames)]
        self.position += 1
        return frame


class ReplayedPiCamera(PiCameraSource):
    """The real Pi camera source reading from memory instead of libcamera: its capture cost is the
    channel conversion every Pi frame gets, with no decode (the camera delivers raw pixels)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        h, w = frames[0].shape[:2]
        super().__init__(w, h)
        self.frames = frames

    def open(self) -> None:
        self._camera = _ReplayCamera(self.frames)

    def _grab(self) -> np.ndarray | None:
        if self._camera.position >= len(self.frames):
            return None
        return super()._grab()

    def close(self) -> None:
        self._camera = None


def decoded_frames(clip: Path) -> list[np.ndarray]:
    frames = []
    with VideoFileSource(clip, loop=False, realtime=False) as source:
        while (frame := source.read()) is not None:
            frames.append(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    return frames


def play(recognizer: Recognizer, open_source: Callable[[], FrameSource], repeats: int) -> dict[str, Any]:
    """Per-frame stage timings, and the end-to-end time (frame read -> answer) measured around both calls."""
    per_stage: dict[str, list[float]] = {s: [] for s in (*STAGES, "total", "end_to_end")}
    decisions: dict[str, int] = {}
    verified_frames = 0
    started = time.perf_counter()
    frames = 0
    for _ in range(repeats):
        with open_source() as source:
            while True:
                t0 = time.perf_counter()
                frame = source.read()
                if frame is None:
                    break
                result = recognizer.recognize(frame.rgb)
                per_stage["end_to_end"].append((time.perf_counter() - t0) * 1000)
                timings = {"capture": frame.capture_ms, **result.timings}
                for stage in STAGES:
                    per_stage[stage].append(timings.get(stage, 0.0))
                per_stage["total"].append(sum(timings.get(s, 0.0) for s in STAGES))
                decisions[result.decision] = decisions.get(result.decision, 0) + 1
                verified_frames += timings.get("verification", 0.0) > 0
                frames += 1
    wall = time.perf_counter() - started
    non_empty = [i for i, v in enumerate(per_stage["invoke"]) if v > 0]  # frames that reached the model
    verified = [i for i in non_empty if per_stage["verification"][i] > 0]
    stats = {stage: percentiles([per_stage[stage][i] for i in non_empty]) for stage in per_stage}

    def overhead(total: str) -> float | None:
        # Per frame, everything but the invoke, relative to the invoke's p50.
        invoke_p50 = stats["invoke"]["p50"]
        if not non_empty or not invoke_p50:
            return None
        other = np.percentile([per_stage[total][i] - per_stage["invoke"][i] for i in non_empty], 50)
        return round(float(other) / invoke_p50, 3)

    return {
        "frames": frames,
        "frames_through_model": len(non_empty),
        "frames_verified": verified_frames,
        "decisions": decisions,
        "fps": round(frames / wall, 1),
        "stages_ms": stats,  # over frames that reached the model (empty views stop after preprocess)
        "verified_frames_end_to_end_ms": percentiles([per_stage["end_to_end"][i] for i in verified]),
        "all_frames_total_ms": percentiles(per_stage["total"]),
        "all_frames_end_to_end_ms": percentiles(per_stage["end_to_end"]),
        # end-to-end minus invoke: includes what no stage timer covers (Python glue, result objects)
        "non_invoke_overhead": overhead("end_to_end"),
        "non_invoke_overhead_stage_sum": overhead("total"),
    }


def verification_with_good_shortlist(recognizer: Recognizer, sample_root: Path, seed: int = 0) -> dict[str, Any]:
    """Verification cost when the model ranks the right product first (as a trained model mostly does).

    The shortlist is the query's true product (its first reference) followed by
    shortlist-1 other sample products; timing covers feature extraction and matching.
    """
    from shelfsight.catalog.index import SearchHit
    from shelfsight.edge_app.core.images import iter_image_files, load_rgb

    rng = np.random.default_rng(seed)
    products = sorted(p.name for p in (sample_root / "catalog").iterdir() if p.is_dir())
    times, verified = [], 0
    for path in iter_image_files(sample_root / "queries"):
        truth = path.parent.name
        others = [p for p in products if p != truth]
        chosen = [truth, *rng.choice(others, recognizer.config.shortlist - 1, replace=False)]
        hits = [SearchHit(p, 0.5, recognizer.catalog.product(p)["references"][0]) for p in chosen]
        timings: dict[str, float] = {}
        inliers, _ = recognizer.verify_shortlist(load_rgb(path), hits, timings)
        times.append(timings["verification"])
        verified += inliers[truth] >= recognizer.config.min_inliers
    return {"queries": len(times), "true_product_verified": round(verified / len(times), 3), "ms": percentiles(times)}


COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
from shelfsight.edge_app.runtime import open_embedder
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
import numpy as np
embedder = open_embedder(sys.argv[1], threads=int(sys.argv[3]))
catalog = Catalog(sys.argv[2], create=False)
recognizer = Recognizer(embedder, catalog, RecognitionConfig())
catalog.start_index()  # what the kiosk does at start: embedding index now, visual words in the background
frame = np.load(sys.argv[4])
t_ready = time.perf_counter()
recognizer.recognize(frame)
t_first = time.perf_counter()
catalog.wait_for_index()
t_complete = time.perf_counter()
recognizer.recognize(frame)
t_hybrid = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({
    "imports_and_open_s": round(t_ready - t0, 3), "cold_start_s": round(t_first - t0, 3),
    "word_index_ready_s": round(t_complete - t0, 3), "first_hybrid_answer_s": round(t_hybrid - t0, 3),
    "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1), "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1),
    "tensorflow_loaded": "tensorflow" in sys.modules,
}))
"""


def cold_start(model: Path, catalog: Path, threads: int, frame_path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", COLD_START, str(model), str(catalog), str(threads), str(frame_path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - started, 3)
    return result


def drop_page_cache() -> bool:
    """Empty the OS page cache (Linux, root only), so the next start reads its files from disk as after a boot."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def after_boot(wanted: bool, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if not wanted:
        return {"skipped": "--no-after-boot"}
    if not drop_page_cache():
        return {"skipped": "cannot drop the page cache (needs root on Linux)"}
    return measure()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="A .tflite embedder (default: the bundled model)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="Catalog sizes in references")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="Plays of the clip per measurement")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_kiosk"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_kiosk.json"))
    parser.add_argument(
        "--no-after-boot",
        dest="after_boot",
        action="store_false",
        help="Skip the cold start after emptying the OS page cache (it slows down the whole machine briefly)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from shelfsight.edge_app.kiosk.sources import resolve_model

    model = resolve_model(args.model)
    args.workdir.mkdir(parents=True, exist_ok=True)
    sample = generate_sample_set(args.workdir / "samples")
    clip = generate_clip(args.workdir / "samples" / "clip.avi", sample)
    with VideoFileSource(clip.path, loop=False, realtime=False) as source:
        for _ in range(int(clip.fps * 1.5)):  # a frame with a product in view
            first = source.read()
    frame_path = args.workdir / "frame.npy"
    assert first is not None
    np.save(frame_path, first.rgb)

    from shelfsight.catalog.store import Catalog

    # Two capture paths: the MJPG clip decoded frame by frame (a webcam in MJPG mode, a stream), and
    # the same frames from memory through the Pi camera source (a camera that delivers raw pixels).
    frames = decoded_frames(clip.path)

    def from_file() -> FrameSource:
        return VideoFileSource(clip.path, loop=False, realtime=False)

    def from_camera() -> FrameSource:
        return ReplayedPiCamera(frames)

    results: dict[str, Any] = {
        "model": str(model),
        "threads": args.threads,
        "clip_frames": int(round(clip.segments[-1].end_s * clip.fps)),
        "sizes": {},
    }
    with open_embedder(model, threads=args.threads) as embedder:
        results["model_input"], results["embedding_dim"] = embedder.input_size, embedder.dim
        for n in (int(s) for s in args.sizes.split(",")):
            path = catalog_for(args.workdir, sample.root, embedder, n)
            with Catalog(path, create=False) as catalog:
                catalog.index()
                # A store's calibrated threshold, not the uncalibrated default 0.5 that every verified
                # match clears: aligned similarity is skipped for a top that clears it, so the low
                # default would time a kiosk that hardly ever aligns.
                store = RecognitionConfig(accept_similarity=2.0, unknown_threshold=STORE_THRESHOLD)
                verified = Recognizer(embedder, catalog, store, RoiConfig())
                global_only = Recognizer(embedder, catalog, RecognitionConfig(verify=False), RoiConfig())
                play(global_only, from_file, 1)  # warm-up: caches, lazy allocations
                entry = {
                    "references": catalog.stats()["references"],
                    "verified": play(verified, from_file, args.repeats),
                    "global": play(global_only, from_file, args.repeats),
                    "global_camera": play(global_only, from_camera, args.repeats),
                    "cold": cold_start(model, path, args.threads, frame_path),
                    # The same from an empty page cache: model, libraries and catalog all come from disk.
                    "cold_after_boot": after_boot(
                        args.after_boot, lambda path=path: cold_start(model, path, args.threads, frame_path)
                    ),
                    "verification_good_shortlist": verification_with_good_shortlist(verified, sample.root),
                }
            v, g, c, gc = entry["verified"], entry["global"], entry["cold"], entry["global_camera"]
            # The yardstick: frame -> answer as a multiple of the bare invoke, which the global
            # run times with nothing beside it (in verified frames the local-feature thread shares
            # the cores with the interpreter, so their own invoke stage is slower).
            bare = g["stages_ms"]["invoke"]["p50"]
            entry["verified_over_bare_invoke"] = {
                q: round(v["stages_ms"]["end_to_end"][q] / bare, 2) for q in ("p50", "p95")
            } | {"bare_invoke_p50_ms": bare}
            results["sizes"][str(n)] = entry
            print(
                f"{n:>7} refs | verified: end-to-end p50 {v['stages_ms']['end_to_end']['p50']:.1f} ms "
                f"p95 {v['stages_ms']['end_to_end']['p95']:.1f} ms (frames verified: p50 "
                f"{v['verified_frames_end_to_end_ms']['p50']:.1f} ms; x bare invoke p50 "
                f"{entry['verified_over_bare_invoke']['p50']} p95 {entry['verified_over_bare_invoke']['p95']}), "
                f"{v['fps']} fps | global: end-to-end p50 "
                f"{g['stages_ms']['end_to_end']['p50']:.1f} ms, invoke p50 {g['stages_ms']['invoke']['p50']:.1f} ms, "
                f"non-invoke overhead {g['non_invoke_overhead']} (stage sum {g['non_invoke_overhead_stage_sum']}) | "
                f"cold start {c['cold_start_s']} s (hybrid from {c['first_hybrid_answer_s']} s), RSS {c['rss_mb']} MB"
                f" (page cache emptied first: {entry['cold_after_boot'].get('cold_start_s', 'not measured')} s)"
            )
            print(
                f"          raw camera frames (no decode): global end-to-end p50 {gc['stages_ms']['end_to_end']['p50']:.2f} ms,"
                f" capture p50 {gc['stages_ms']['capture']['p50']:.3f} ms, non-invoke overhead {gc['non_invoke_overhead']}"
                f" (stage sum {gc['non_invoke_overhead_stage_sum']})"
            )
            good = entry["verification_good_shortlist"]
            print(
                f"          verification with the right product first in the shortlist: p50 {good['ms']['p50']:.2f} ms"
                f" p95 {good['ms']['p95']:.2f} ms, verified {good['true_product_verified']:.0%}"
            )
            for stage in (*STAGES, "total", "end_to_end"):
                print(
                    f"          {stage:<13} verified p50 {v['stages_ms'][stage]['p50']:7.2f} p95 {v['stages_ms'][stage]['p95']:7.2f}"
                    f" | global p50 {g['stages_ms'][stage]['p50']:7.2f} p95 {g['stages_ms'][stage]['p95']:7.2f}"
                )
    results["host_reference"] = host_reference()
    print(f"host yardstick (issue 3's reference figure): {results['host_reference']}")
    write_report(args.out, results)


if __name__ == "__main__":
    main()
