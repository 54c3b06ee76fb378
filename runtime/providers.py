"""Which onnxruntime execution providers actually work here, and CPU thread counts.

`get_available_providers()` lists what the wheel was built with, not what runs: a CUDA
build without CUDA libraries silently falls back to CPU. So a provider counts as working
only when a session asked for it alone reports it in `get_providers()`.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import metadata
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ProviderError(RuntimeError):
    """A requested provider is not usable on this machine."""


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
    quota = _cgroup_cpu_limit()
    return max(1, min(cores or 1, quota or cores or 1))


def _cgroup_cpu_limit() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, int(int(quota) // int(period)))


@cache
def cuda_works(probe_model: str) -> bool:
    """True when a session on PROBE_MODEL really runs on the CUDA provider."""
    ort = onnxruntime_module()
    if PROVIDER_NAMES["cuda"] not in ort.get_available_providers():
        return False
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    try:
        session = ort.InferenceSession(probe_model, providers=[PROVIDER_NAMES["cuda"]])
    except Exception:  # missing CUDA/cuDNN libraries surface as generic runtime errors
        return False
    return PROVIDER_NAMES["cuda"] in session.get_providers()


def choose_provider(requested: str, cuda_probe: Path) -> str:
    """'auto' -> cuda when it really works, else cpu. 'cuda' without CUDA is an error."""
    if requested not in ("auto", *PROVIDER_NAMES):
        raise ProviderError(f"unknown provider {requested!r} (auto, cpu or cuda)")
    if requested == "cpu":
        return "cpu"
    if cuda_works(str(cuda_probe)):
        return "cuda"
    if requested == "cuda":
        raise ProviderError(
            "the CUDA execution provider does not work on this machine (is onnxruntime-gpu "
            "installed, with CUDA and cuDNN libraries?); use --provider cpu"
        )
    return "cpu"
