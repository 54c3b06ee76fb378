"""What this machine offers the session: the onnxruntime install, CUDA in it, CPU cores.

Whether CUDA really works is only known by starting a session on it; `session.py` does
that once, on the graph it will run.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from albert_onnx.errors import ProviderError

PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def onnxruntime_module():
    """Import onnxruntime, with an install hint instead of a bare ImportError."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ProviderError(
            "onnxruntime is not installed: pip install 'albert-onnx[cpu]' "
            "(or 'albert-onnx[gpu]' on a CUDA machine)"
        ) from exc
    return onnxruntime


def cuda_in_build() -> bool:
    """True when the installed onnxruntime was built with CUDA (not that CUDA works)."""
    return PROVIDER_NAMES["cuda"] in onnxruntime_module().get_available_providers()


def installed_runtimes() -> list[str]:
    """Distributions that provide the `onnxruntime` package; more than one is a broken install."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def cpu_threads() -> int:
    """Cores this process may run on (affinity and cgroup quota aware), never more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpu_limit()
    return max(1, min(cores or 1, quota or cores or 1))


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """Whole CPUs of this container's quota (rounded down, at least 1), or None if unlimited.

    cgroup v2 writes "QUOTA PERIOD" or "max PERIOD" to cpu.max; v1 keeps the two numbers in
    two files, with quota -1 for unlimited. A 1.5-CPU quota gives 1: a second busy thread
    would only be throttled.
    """
    try:
        quota, period = v2.read_text().split()
    except (OSError, ValueError):
        try:
            quota, period = (path.read_text().strip() for path in v1)
        except (OSError, ValueError):
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, int(quota) // int(period))
    except (ValueError, ZeroDivisionError):
        return None
