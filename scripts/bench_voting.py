#!/usr/bin/env python3
"""Announcement stability: the demo clip through the kiosk with the previous voting rule and with hysteresis.

The clip (12 sample products, 10 fps, ground truth per second) is played through the real
Kiosk, recognizer and shipped model; bursts of motion blur (1-8 frames, started with
probability `--blur` per frame: a shopper turning the product) are added with a fixed seed.
Both rules see the same frames. Reported per rule: seconds announced correctly (the demo's
scoring), announcement changes, and flickers (the announcement leaves a product and comes
back to it within 2.5 s, what the issue found).

    .venv/bin/python scripts/bench_voting.py --seconds 60 --blur 0.1 --json docs/benchmarks/voting.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import write_report  # noqa: E402

from shelfsight.edge_app.camera import Frame, VideoFileSource  # noqa: E402
from shelfsight.edge_app.demo.run import build_sample_catalog, play  # noqa: E402
from shelfsight.edge_app.demo.samples import generate_clip, generate_sample_set, load_clip_truth  # noqa: E402
from shelfsight.edge_app.kiosk.app import Kiosk  # noqa: E402
from shelfsight.edge_app.recognition import Recognizer, TemporalVoter  # noqa: E402
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig  # noqa: E402
from shelfsight.edge_app.runtime.factory import open_embedder  # noqa: E402

FLICKER_FRAMES = 25  # 2.5 s at the clip's 10 fps


def blurred(source: VideoFileSource, blur: float, seed: int) -> Iterator[Frame]:
    rng = np.random.default_rng(seed)
    burst = 0
    while (frame := source.read()) is not None:
        if burst == 0 and rng.random() < blur:
            burst = int(rng.integers(1, 9))
        if burst > 0:
            burst -= 1
            frame = Frame(cv2.GaussianBlur(frame.rgb, (0, 0), 7), frame.capture_ms, frame.index)
        yield frame


def run(recognizer: Recognizer[Any], voter: TemporalVoter, clip: Path, blur: float, seed: int) -> dict[str, Any]:
    shown: list[tuple[str, str | None]] = []
    kiosk = Kiosk(
        recognizer, None, voter, on_update=lambda s: shown.append((s.announcement.decision, s.announcement.product_id))
    )
    with VideoFileSource(clip, loop=False, realtime=False) as source:
        report = play(kiosk, blurred(source, blur, seed), source.fps or 10.0, load_clip_truth(clip))
    changes = [i for i in range(1, len(shown)) if shown[i] != shown[i - 1]]
    flickers = sum(
        1
        for a, b in zip(changes, changes[1:])
        if b - a <= FLICKER_FRAMES and shown[a - 1][0] == "product" and shown[b] == shown[a - 1]
    )
    return {"accuracy": round(report.accuracy(), 4), "changes": len(changes), "flickers": flickers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("edge_app/assets/default_model.tflite"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--blur", type=float, nargs="+", default=[0.0, 0.1], help="Burst start probabilities")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = RecognitionConfig()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-voting-") as tmp, open_embedder(args.model, threads=1) as embedder:
        root = Path(tmp)
        sample = generate_sample_set(root / "samples")
        clip = root / "clip.avi"
        generate_clip(clip, sample, seconds=args.seconds)
        catalog = build_sample_catalog(root / "catalog.db", sample.catalog_dir, sample.products_csv, embedder)
        recognizer = Recognizer(embedder, catalog, config, RoiConfig())
        for blur in args.blur:
            before = TemporalVoter(config.vote_window, config.vote_min, switch_votes=config.vote_min, hold_frames=0)
            row = {
                "blur": blur,
                "previous_rule": run(recognizer, before, clip, blur, args.seed),
                "hysteresis": run(recognizer, TemporalVoter.from_config(config), clip, blur, args.seed),
            }
            rows.append(row)
            for rule in ("previous_rule", "hysteresis"):
                r = row[rule]
                print(f"blur {blur:.2f} {rule:14s} accuracy {r['accuracy']:.2f}  changes {r['changes']:3d}  "
                      f"flickers {r['flickers']}", flush=True)  # fmt: skip
        catalog.close()
    if args.json:
        write_report(args.json, {"seconds": args.seconds, "seed": args.seed, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
