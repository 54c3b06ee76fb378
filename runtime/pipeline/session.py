"""Session stage: pick the graph variant and provider, start one onnxruntime session, run it.

`auto` tries CUDA (fp16, else fp32: the INT8 graph's dynamic quantization runs on CPU
kernels, so it is never chosen for CUDA) and takes the CPU (INT8, else fp32) when CUDA is
not built in or its session does not start; the cause is kept for `info`. `cuda` that does
not work is an error naming the cause, never a silent CPU run: fallback to the CPU is
disabled both when the session is created and when it runs.

Hashes are verified before a session is built, so no throwaway session ever runs on a file
the manifest does not vouch for. One `run` path serves both providers: the inputs are host
arrays and only the requested output (B x H when pooled in the graph) comes back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_onnx.errors import OptionError, OutOfMemoryError, ProviderError
from albert_onnx.runtime.model.model_dir import ModelDir
from albert_onnx.runtime.options import Precision, Provider, check_choice
from albert_onnx.runtime.pipeline.providers import PROVIDER_NAMES, cuda_in_build, onnxruntime_module

PREFERRED = {"cuda": ("fp16", "fp32"), "cpu": ("int8", "fp32", "fp16")}
OUT_OF_MEMORY = re.compile(r"out of memory|failed to allocate|alloc_failed|bad_alloc", re.I)


def onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception types (they derive from Exception, not RuntimeError),
    plus the ValueError / RuntimeError its Python layer raises for bad providers."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = (v for v in vars(state).values() if isinstance(v, type))
    return (*(v for v in found if issubclass(v, Exception)), ValueError, RuntimeError)


class ModelSession:
    """One onnxruntime session on one provider, with no fallback to another."""

    def __init__(self, graph: Path, provider: str, threads: int, device_id: int = 0) -> None:
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.provider = provider
        name = PROVIDER_NAMES[provider]
        providers: list = [name]
        if provider == "cuda":
            providers = [(name, {"device_id": device_id})]
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
        try:
            # enable_fallback=0: onnxruntime would otherwise retry on the CPU and only print why
            self._session = ort.InferenceSession(
                str(graph), options, providers=providers, enable_fallback=0
            )
        except onnxruntime_errors() as exc:
            raise ProviderError(f"{name} could not start a session on {graph}: {exc}") from exc
        self._session.disable_fallback()
        if name not in self._session.get_providers():
            raise ProviderError(
                f"{name} could not start a session on {graph}: onnxruntime left it out "
                f"(session providers: {', '.join(self._session.get_providers())}), which "
                "happens when its CUDA or cuDNN libraries do not load"
            )

    def run(self, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run one padded batch and return OUTPUT as float32 on the host."""
        try:
            return self._session.run([output], inputs)[0]
        except onnxruntime_errors() as exc:
            shape = "x".join(map(str, inputs["input_ids"].shape))
            if OUT_OF_MEMORY.search(str(exc)):
                raise OutOfMemoryError(f"a {shape} batch ran out of memory: {exc}") from exc
            raise ProviderError(f"onnxruntime failed on a {shape} batch: {exc}") from exc


@dataclass(frozen=True)
class Placement:
    provider: str
    precision: str


def plan(provider: str, precision: str, variants: set[str], cuda: bool) -> list[Placement]:
    """Where to try the model, best first: (provider, precision) pairs."""
    if provider == "cuda" and precision == "int8":
        raise OptionError(
            "the INT8 graph runs on CPU kernels; on CUDA use fp16 or fp32 (or --provider cpu)"
        )
    placements = []
    for candidate in ("cuda", "cpu") if provider == "auto" else (provider,):
        if candidate == "cuda" and provider == "auto" and (not cuda or precision == "int8"):
            continue
        if precision != "auto":
            placements.append(Placement(candidate, precision))
            continue
        chosen = next((p for p in PREFERRED[candidate] if p in variants), None)
        if chosen is not None:
            placements.append(Placement(candidate, chosen))
        elif provider == "cuda":
            raise ProviderError(
                "the model has no fp16 or fp32 graph for CUDA "
                f"(it has {', '.join(sorted(variants))})"
            )
    return placements


@dataclass(frozen=True)
class OpenedSession:
    session: ModelSession
    placement: Placement
    cuda_unavailable: str | None  # why `auto` did not take CUDA, when it was built in


def open_session(
    model: ModelDir,
    provider: Provider = "auto",
    precision: Precision = "auto",
    threads: int = 1,
    device_id: int = 0,
) -> OpenedSession:
    """Verify the chosen graph's hash, then start the first session that works."""
    check_choice("provider", provider, Provider)
    check_choice("precision", precision, Precision)
    cuda = provider != "cpu" and cuda_in_build()
    if provider == "cuda" and not cuda:
        raise ProviderError(
            "the CUDA execution provider is not in this onnxruntime build; install "
            "onnxruntime-gpu (and not onnxruntime beside it), or use --provider cpu"
        )
    *tries, last = plan(provider, precision, set(model.manifest.variants), cuda)
    cause = None
    for placement in tries:  # only `auto`'s CUDA attempt comes before a last resort
        try:
            return OpenedSession(_start(model, placement, threads, device_id), placement, None)
        except ProviderError as exc:
            cause = str(exc)
    return OpenedSession(_start(model, last, threads, device_id), last, cause)


def _start(model: ModelDir, placement: Placement, threads: int, device_id: int) -> ModelSession:
    graph = model.graph(placement.precision)  # hash first: never a session on unvouched bytes
    try:
        return ModelSession(graph, placement.provider, threads, device_id)
    except ProviderError as exc:
        if placement.provider != "cuda":
            raise
        raise ProviderError(
            f"the CUDA execution provider does not work here ({exc}); is onnxruntime-gpu "
            "installed, with CUDA and cuDNN libraries? Use --provider cpu"
        ) from exc
