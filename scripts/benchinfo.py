"""What a benchmark ran on, recorded beside its figures.

Sessions land on different CPUs: the same int8 model ran 2.3 ms per invoke on one
2-core machine and 6.6 ms on another without AVX-512, so a figure is only
comparable with the CPU model and vector extensions it was measured with.
"""

from __future__ import annotations

import json
import os
import platform
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


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's figures as JSON, with the machine they were measured on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": machine_info(), **report}, indent=2) + "\n")
    print(f"wrote {path}")
