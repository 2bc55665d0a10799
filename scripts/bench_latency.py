#!/usr/bin/env python3
"""Invoke latency and size of TFLite embedders (1 and 2 threads), on the edge runtime only.

Usage:
  .venv/bin/python scripts/bench_latency.py edge_app/assets/default_model.tflite [more.tflite] --json out/bench_latency.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchinfo import write_report  # noqa: E402

from shelfsight.edge_app.runtime.litert import LiteRTEmbedder  # noqa: E402


def measure(path: Path, threads: int, runs: int) -> dict:
    embedder = LiteRTEmbedder(path, threads=threads)
    image = np.random.default_rng(0).integers(0, 256, (1, embedder.input_size, embedder.input_size, 3), np.uint8)
    for _ in range(10):
        embedder.embed_batch(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        embedder.embed_batch(image)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "threads": threads,
        "ms_p50": float(np.percentile(times, 50)),
        "ms_p95": float(np.percentile(times, 95)),
        "ms_mean": float(np.mean(times)),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    out = []
    for path in args.models:
        row = {
            "model": str(path),
            "size_bytes": path.stat().st_size,
            "latency": [measure(path, t, args.runs) for t in (1, 2)],
        }
        out.append(row)
        for lat in row["latency"]:
            print(
                f"{path.name}: {row['size_bytes'] / 1e6:.2f} MB, {lat['threads']} thread(s): "
                f"p50 {lat['ms_p50']:.2f} ms, p95 {lat['ms_p95']:.2f} ms",
                flush=True,
            )
    write_report(args.json, {"models": out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
