#!/usr/bin/env python3
"""Does running the embedding invoke and the local-feature work at the same time pay? (issue 11, item 5)

Per frame the hybrid pipeline runs two independent pieces of work before
verification: the embedding invoke (LiteRT) and ORB extraction + quantisation to
visual words (OpenCV + numpy). Both release the GIL, so a second thread could
overlap them. This times, in one process on the same frames:

* sequential: invoke, then features + words (what the pipeline does today);
* overlapped: features + words on a worker thread while the main thread invokes;

each with the interpreter on 1 and on 2 threads, and reports the overlapped time
as a fraction of the sequential one. On a 2-core host the interpreter's second
thread and the feature thread compete for the same cores; a Pi 4 has four.

    .venv/bin/python scripts/bench_concurrency.py --json docs/benchmarks/concurrency.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchinfo import write_report  # noqa: E402

from shelfsight.edge_app.assets import default_model_path, default_vocabulary_path  # noqa: E402
from shelfsight.edge_app.core.features import extract_features  # noqa: E402
from shelfsight.edge_app.core.images import fit_square, iter_image_files, load_rgb  # noqa: E402
from shelfsight.edge_app.core.vocabulary import load_vocabulary  # noqa: E402
from shelfsight.edge_app.demo.samples import generate_sample_set  # noqa: E402
from shelfsight.edge_app.recognition.config import RecognitionConfig  # noqa: E402
from shelfsight.edge_app.runtime.litert import LiteRTEmbedder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--frames", type=int, default=60, help="Frames per configuration.")
    parser.add_argument("--repeats", type=int, default=3, help="Passes over the frames (the best pass counts).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    vocabulary = load_vocabulary(default_vocabulary_path())
    with tempfile.TemporaryDirectory() as tmp:
        samples = generate_sample_set(Path(tmp), n_products=12, refs_per_product=1, queries_per_product=5)
        frames = [load_rgb(p) for p in iter_image_files(samples.queries_dir)][: args.frames]

    cfg = RecognitionConfig()  # the kiosk's query extraction (feature count, side, FAST threshold)

    def local_work(rgb: np.ndarray) -> int:
        features = extract_features(rgb, cfg.orb_features, cfg.feature_side, cfg.query_fast_threshold)
        return len(vocabulary.quantize(features.descriptors))

    results = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for threads in (1, 2):
            embedder = LiteRTEmbedder(args.model, threads=threads)
            squares = [fit_square(f, embedder.input_size)[None] for f in frames]
            for square, rgb in zip(squares[:3], frames[:3]):  # warm-up
                embedder.embed_batch(square)
                local_work(rgb)
            timings: dict[str, list[float]] = {"invoke": [], "local": [], "sequential": [], "overlapped": []}
            for _ in range(args.repeats):
                for name in timings:
                    timings[name].append(0.0)
                for square, rgb in zip(squares, frames):
                    t0 = time.perf_counter()
                    embedder.embed_batch(square)
                    t1 = time.perf_counter()
                    local_work(rgb)
                    t2 = time.perf_counter()
                    future = pool.submit(local_work, rgb)
                    embedder.embed_batch(square)
                    future.result()
                    t3 = time.perf_counter()
                    timings["invoke"][-1] += t1 - t0
                    timings["local"][-1] += t2 - t1
                    timings["sequential"][-1] += t2 - t0
                    timings["overlapped"][-1] += t3 - t2
            embedder.close()
            best = {k: min(v) / len(frames) * 1000 for k, v in timings.items()}
            row = {
                "interpreter_threads": threads,
                "frames": len(frames),
                "invoke_ms": round(best["invoke"], 2),
                "local_ms": round(best["local"], 2),
                "sequential_ms": round(best["sequential"], 2),
                "overlapped_ms": round(best["overlapped"], 2),
                "overlapped_over_sequential": round(best["overlapped"] / best["sequential"], 3),
            }
            results.append(row)
            print(
                f"interpreter threads {threads}: invoke {row['invoke_ms']} ms, features+words {row['local_ms']} ms; "
                f"sequential {row['sequential_ms']} ms, overlapped {row['overlapped_ms']} ms "
                f"(x{row['overlapped_over_sequential']})",
                flush=True,
            )
    if args.json:
        write_report(args.json, {"model": str(args.model), "results": results})


if __name__ == "__main__":
    main()
