"""What a benchmark ran on, recorded beside its figures.

Sessions land on different CPUs: the same int8 model ran 2.3 ms per invoke on one
2-core machine and 6.6 ms on another without AVX-512, so a figure is only
comparable with the CPU model and vector extensions it was measured with.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

_SIMD = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")


def machine_info() -> dict[str, Any]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "simd": [f for f in _SIMD if f in flags],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


# Issue 3 states its speed targets beside one reference figure from the machine it was written on:
# exact numpy float search over 100k x 128 took ~1.8 ms there. Timing the same operation here says
# how much slower or faster this host is for this kind of memory-bound numpy work.
REFERENCE_OPERATION = "exact numpy float search, 100k x 128 float32 unit vectors, top-5 (matrix @ query + argpartition)"
REFERENCE_ISSUE_MS = 1.8
_REFERENCE_CODE = r"""
import json, time
import numpy as np
rng = np.random.default_rng(0)
matrix = rng.standard_normal((100_000, 128)).astype(np.float32)
matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
queries = matrix[rng.integers(0, 100_000, 40)]
times = []
for query in queries:
    t0 = time.perf_counter()
    np.argpartition(-(matrix @ query), 5)[:5]
    times.append((time.perf_counter() - t0) * 1000)
print(json.dumps(float(np.median(times[10:]))))
"""


def host_reference() -> dict[str, Any]:
    """Time the issue's reference operation in a fresh process with numpy's default threading."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _REFERENCE_CODE], capture_output=True, text=True, check=True, env=env)
    measured = float(out.stdout.strip().splitlines()[-1])
    return {
        "operation": REFERENCE_OPERATION,
        "p50_ms": round(measured, 3),
        "issue_machine_ms": REFERENCE_ISSUE_MS,
        "slowdown_vs_issue_machine": round(measured / REFERENCE_ISSUE_MS, 2),
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's figures as JSON, with the machine they were measured on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": machine_info(), **report}, indent=2) + "\n")
    print(f"wrote {path}")
