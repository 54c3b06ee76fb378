"""The corpus job behind `albert-onnx embed`, as a Python call: one or more inputs (files,
directories, globs, URLs; `io/inputs.py`) through every stage into one output, in input
order, resumably (`jobs/`: plan -> parts -> commit, run here by the local executor).

summary = embed_corpus(Embedder(), "corpus/", "vectors.npy", id_field="id")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from albert_onnx.runtime.embedder import Embedder
from albert_onnx.runtime.jobs.local import Summary, run_job
from albert_onnx.runtime.options import Dtype, JobOptions, OnError
from albert_onnx.runtime.pipeline.pipeline import OnBatch

DEFAULT = JobOptions()


def embed_corpus(
    embedder: Embedder,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    text_field: str = DEFAULT.text_field,
    id_field: str | None = DEFAULT.id_field,
    on_error: OnError = DEFAULT.on_error,
    dtype: Dtype = DEFAULT.dtype,
    window_texts: int = DEFAULT.window_texts,
    part_rows: int = DEFAULT.part_rows,
    part_bytes: int = DEFAULT.part_bytes,
    calibration: str | Path | None = DEFAULT.calibration,
    calibration_texts: int = DEFAULT.calibration_texts,
    keep_text: bool = DEFAULT.keep_text,
    index: bool = DEFAULT.index,
    resume: bool = False,
    force: bool = False,
    on_batch: OnBatch | None = None,
) -> Summary:
    """Embed every record of INPUTS into OUTPUT (a file: .npy, .npz, .parquet, .jsonl; or a
    directory of Parquet parts), in input order, as DTYPE vectors (`pipeline/quantize.py`;
    int8 and uint8 calibrated on CALIBRATION's, else the corpus's, first CALIBRATION_TEXTS
    records); see the module docstring."""
    options = JobOptions(text_field, id_field, on_error, dtype, window_texts, part_rows,
                         part_bytes, calibration, calibration_texts, keep_text, index)  # type: ignore[arg-type]  # fmt: skip
    specs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    return run_job(embedder.pipeline, specs, output, options, resume=resume, force=force,
                   on_batch=on_batch)  # fmt: skip
