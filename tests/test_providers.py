"""Where the model runs: `auto`'s choices, CUDA that is asked for and does not work, device
ids, out-of-memory retries, and the CPU thread count.

No GPU can be had for this project, so the CUDA cases pretend: onnxruntime is made to list
CUDAExecutionProvider and to report it on sessions that asked for it, while the graph
really runs on the CPU. That exercises every decision the runtime makes about CUDA; it
proves nothing about CUDA kernels (benchmarks/gpu_smoke.py is for the day a GPU appears).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from albert_onnx import Embedder
from albert_onnx.errors import AlbertOnnxWarning, ManifestError, OptionError, ProviderError
from albert_onnx.runtime.pipeline.pipeline import default_batch_tokens
from albert_onnx.runtime.pipeline.providers import cgroup_cpu_limit, cpu_threads

from conftest import real_texts

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
RealSession = onnxruntime.InferenceSession


class PretendOnnxruntime:
    """onnxruntime-gpu as the runtime sees it; CUDA_ERROR makes CUDA sessions fail to start."""

    def __init__(self, cuda_error: str | None = None, oom_above_rows: int | None = None):
        self.cuda_error, self.oom_above_rows = cuda_error, oom_above_rows
        self.sessions: list[tuple[str, list]] = []  # (graph file, providers asked for)

    def session(self, path, options=None, providers=None, **kwargs):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self.sessions.append((os.path.basename(path), providers))
        if CUDA in names and self.cuda_error:
            raise RuntimeError(self.cuda_error)
        return PretendSession(RealSession(path, options, providers=[CPU]), names, self)


class PretendSession:
    def __init__(self, real, providers, runtime: PretendOnnxruntime) -> None:
        self.real, self.providers, self.runtime = real, providers, runtime

    def get_providers(self) -> list[str]:
        return [*self.providers, CPU] if CUDA in self.providers else [CPU]

    def disable_fallback(self) -> None:
        pass

    def run(self, outputs, inputs):
        limit = self.runtime.oom_above_rows
        if limit is not None and len(inputs["input_ids"]) > limit:
            raise RuntimeException("CUDA failure 2: out of memory ; GPU=0 ; expr=cudaMalloc")
        return self.real.run(outputs, inputs)


@pytest.fixture
def pretend_cuda(monkeypatch):
    def install(**kwargs) -> PretendOnnxruntime:
        runtime = PretendOnnxruntime(**kwargs)
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
        monkeypatch.setattr(onnxruntime, "InferenceSession", runtime.session)
        return runtime

    return install


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])


def without_variants(export, destination, *names):
    copy = shutil.copytree(export, destination)
    manifest = json.loads((copy / "albert_onnx.json").read_text())
    for name in names:
        (copy / manifest["variants"].pop(name)["file"]).unlink()
    (copy / "albert_onnx.json").write_text(json.dumps(manifest))
    return copy


class TestAutoChooses:
    def test_fp16_on_cuda_when_cuda_starts(self, english_export, pretend_cuda):
        runtime = pretend_cuda()
        embedder = Embedder(english_export)
        assert (embedder.provider, embedder.precision) == ("cuda", "fp16")
        assert runtime.sessions == [("model.fp16.onnx", [(CUDA, {"device_id": 0})])]
        assert embedder.cuda_unavailable is None

    def test_fp32_on_cuda_for_a_model_without_fp16(self, english_export, tmp_path, pretend_cuda):
        model = without_variants(english_export, tmp_path / "m", "fp16")
        pretend_cuda()
        embedder = Embedder(model)
        assert (embedder.provider, embedder.precision) == ("cuda", "fp32")

    def test_never_int8_on_cuda_but_int8_on_the_cpu(self, english_export, tmp_path, pretend_cuda):
        model = without_variants(english_export, tmp_path / "m", "fp16", "fp32")
        runtime = pretend_cuda()
        embedder = Embedder(model)
        assert (embedder.provider, embedder.precision) == ("cpu", "int8")
        assert [providers for _, providers in runtime.sessions] == [[CPU]]

    def test_the_cpu_when_cuda_does_not_start_saying_why(self, english_export, pretend_cuda):
        pretend_cuda(cuda_error="CUDA driver version is insufficient for CUDA runtime version")
        with pytest.warns(AlbertOnnxWarning, match="CUDA is installed but did not start"):
            embedder = Embedder(english_export)
        assert (embedder.provider, embedder.precision) == ("cpu", "int8")
        assert "CUDA driver version is insufficient" in embedder.cuda_unavailable

    def test_int8_on_the_cpu_without_cuda(self, english_export, no_cuda):
        embedder = Embedder(english_export)
        assert (embedder.provider, embedder.precision) == ("cpu", "int8")
        assert embedder.cuda_unavailable is None


class TestCudaAskedFor:
    def test_not_working_is_an_error_naming_the_cause(self, english_export, pretend_cuda):
        pretend_cuda(cuda_error="libcudnn_adv.so.9: cannot open shared object file")
        with pytest.raises(ProviderError, match=r"does not work here .*libcudnn_adv\.so\.9"):
            Embedder(english_export, provider="cuda")

    def test_not_in_the_build_is_an_error(self, english_export, no_cuda):
        with pytest.raises(ProviderError, match="not in this onnxruntime build"):
            Embedder(english_export, provider="cuda")

    def test_int8_is_refused(self, english_export, pretend_cuda):
        pretend_cuda()
        with pytest.raises(OptionError, match="INT8 graph runs on CPU kernels"):
            Embedder(english_export, provider="cuda", precision="int8")

    def test_device_id_reaches_the_provider(self, english_export, pretend_cuda):
        runtime = pretend_cuda()
        Embedder(english_export, provider="cuda", device_id=1)
        assert runtime.sessions == [("model.fp16.onnx", [(CUDA, {"device_id": 1})])]

    def test_a_device_id_means_cuda_never_a_silent_cpu_run(self, english_export, pretend_cuda):
        pretend_cuda(cuda_error="invalid device ordinal")
        with pytest.raises(ProviderError, match="invalid device ordinal"):
            Embedder(english_export, device_id=3)

    def test_device_id_is_checked(self, english_export):
        with pytest.raises(OptionError, match="device_id must be a GPU index"):
            Embedder(english_export, device_id=-1)
        with pytest.raises(OptionError, match="no meaning with provider='cpu'"):
            Embedder(english_export, provider="cpu", device_id=0)

    def test_hashes_are_verified_before_any_session_starts(
        self, english_export, tmp_path, pretend_cuda
    ):
        model = shutil.copytree(english_export, tmp_path / "m")
        with open(model / "model.fp16.onnx", "r+b") as f:
            f.seek(500)
            f.write(b"\x00\x01\x02")
        runtime = pretend_cuda()
        with pytest.raises(ManifestError, match=r"model\.fp16\.onnx: sha256"):
            Embedder(model)
        assert runtime.sessions == []

    def test_the_token_budget_scales_with_the_model(self, english_export, pretend_cuda):
        pretend_cuda()
        embedder = Embedder(english_export)
        assert embedder.max_batch_tokens == default_batch_tokens("cuda", {"intermediate_size": 128})
        base = default_batch_tokens("cuda", {"intermediate_size": 3072})
        xxlarge = default_batch_tokens("cuda", {"intermediate_size": 16384})
        assert base == 131_072 and xxlarge < base < embedder.max_batch_tokens
        assert default_batch_tokens("cpu", {"intermediate_size": 3072}) == 4096


def test_out_of_memory_halves_the_batch_and_the_budget(english_export, pretend_cuda):
    texts = real_texts()[:40]
    expected = Embedder(english_export, provider="cpu", precision="fp32").embed(texts)
    pretend_cuda(oom_above_rows=4)
    embedder = Embedder(english_export, provider="cuda", precision="fp32", max_batch_tokens=50_000)
    with pytest.warns(AlbertOnnxWarning, match="out of memory .* retrying in halves"):
        vectors = embedder.embed(texts)
    assert np.abs(vectors - expected).max() < 1e-5
    with warnings.catch_warnings():  # the smaller budget is kept: no second out-of-memory
        warnings.simplefilter("error")
        assert np.abs(embedder.embed(texts) - expected).max() < 1e-5


def test_one_text_that_does_not_fit_is_an_error(english_export, pretend_cuda):
    from albert_onnx.errors import OutOfMemoryError

    pretend_cuda(oom_above_rows=0)
    embedder = Embedder(english_export, provider="cuda", precision="fp32")
    with warnings.catch_warnings(), pytest.raises(OutOfMemoryError, match="ran out of memory"):
        warnings.simplefilter("ignore")
        embedder.embed(["a single text"])


class TestCpuThreads:
    def test_follow_cpu_affinity(self):
        code = (
            "import os; os.sched_setaffinity(0, {0}); "
            "from albert_onnx.runtime.pipeline.providers import cpu_threads; print(cpu_threads())"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.stdout.strip() == "1"
        assert 1 <= cpu_threads() <= (os.cpu_count() or 1)

    @pytest.mark.parametrize(
        ("v2", "v1", "cpus"),
        [
            ("max 100000\n", None, None),
            ("200000 100000\n", None, 2),
            ("150000 100000\n", None, 1),  # 1.5 CPUs: a second busy thread is only throttled
            ("50000 100000\n", None, 1),
            (None, ("400000\n", "100000\n"), 4),
            (None, ("-1\n", "100000\n"), None),
            (None, None, None),
        ],
    )
    def test_cgroup_quota(self, tmp_path, v2, v1, cpus):
        v2_file = tmp_path / "cpu.max"
        v1_files = (tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us")
        if v2:
            v2_file.write_text(v2)
        if v1:
            for path, text in zip(v1_files, v1, strict=True):
                path.write_text(text)
        assert cgroup_cpu_limit(v2_file, v1_files) == cpus

    def test_more_threads_than_cores_are_clamped_with_a_warning(self, english_export):
        with pytest.warns(AlbertOnnxWarning, match=r"threads=1000 is more than the \d+ cores"):
            embedder = Embedder(english_export, threads=1000)
        assert embedder.embed(["still works"]).shape == (1, 64)

    @pytest.mark.parametrize("threads", [0, -2, 1.5])
    def test_threads_below_one_are_refused(self, english_export, threads):
        with pytest.raises(OptionError, match="threads must be a whole number of at least 1"):
            Embedder(english_export, threads=threads)
