"""Session stage: run one verified ONNX graph on the CPU or CUDA provider.

On CUDA the batch goes through IO binding: inputs are copied to the device once and only
the requested output (B x H when pooled in the graph) comes back, not B x S x H.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from albert_onnx.runtime.providers import PROVIDER_NAMES, ProviderError, onnxruntime_module


class ModelSession:
    def __init__(self, path: Path, provider: str, threads: int) -> None:
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.provider = provider
        providers = [PROVIDER_NAMES[provider]]
        if provider == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        if PROVIDER_NAMES[provider] not in self._session.get_providers():
            raise ProviderError(f"{PROVIDER_NAMES[provider]} could not be started for {path}")

    def run(self, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run one padded batch and return OUTPUT as float32 on the host."""
        if self.provider == "cpu":
            return self._session.run([output], inputs)[0]
        binding = self._session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(output, "cpu")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
