"""The machine a benchmark ran on, as its results file records it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from albert_onnx.runtime.pipeline.providers import cpu_threads


def cpu_description() -> dict:
    flags: list[str] = []
    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "fma")
            flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
    return {
        "cpu": model,
        "flags": flags,
        "threads": cpu_threads(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
