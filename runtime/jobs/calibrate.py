"""The ranges of int8 and uint8 vectors: each dimension's minimum and maximum over the
vectors of a deterministic sample, the first `calibration_texts` records of a corpus.

A job takes them once at its start, before anything is written (`state.open_state` keeps
them for a resumed run): from `--calibration FILE`, else from the model directory (what
`albert-onnx calibrate` recorded for the graph the job runs, the same ranges the server
quantizes with), else from the corpus's own first records."""

from __future__ import annotations

from dataclasses import replace
from itertools import islice

from albert_onnx.errors import OptionError
from albert_onnx.runtime.io.records import Record
from albert_onnx.runtime.jobs.part import iter_items
from albert_onnx.runtime.jobs.plan import Plan, make_plan
from albert_onnx.runtime.model.manifest import load_manifest
from albert_onnx.runtime.options import JobOptions
from albert_onnx.runtime.pipeline.pipeline import Pipeline
from albert_onnx.runtime.pipeline.quantize import Ranges


def sample(plan: Plan, options: JobOptions) -> tuple[list[str], str]:
    """The calibration texts and what they are, in words."""
    limit = options.calibration_texts
    if options.calibration is not None:
        # ids play no part here, so a calibration file needs only the text field
        sampled = replace(options, id_field=None)
        plan, what = make_plan([options.calibration], sampled), options.calibration
    elif plan.stdin:
        raise OptionError(
            "int8 and uint8 vectors calibrate on the corpus's first records, and standard "
            "input cannot be read twice: pass --calibration FILE"
        )
    else:
        sampled, what = options, "the corpus"
    records = (item for _, item in iter_items(plan, sampled) if isinstance(item, Record))
    texts = [record.text for record in islice(records, limit)]
    if not texts:
        raise OptionError(f"{what} has no records to calibrate int8 and uint8 ranges on")
    return texts, f"the first {len(texts):,} records of {what}"


def calibrate(pipeline: Pipeline, plan: Plan, options: JobOptions) -> Ranges:
    """A job's ranges (see the module docstring), as the job's pipeline embeds."""
    recorded = pipeline.calibration
    if options.calibration is None and recorded is not None:
        return replace(recorded, source=f"the model's calibration, on {recorded.source}")
    return _measure(pipeline, plan, options)


def record(pipeline: Pipeline, inputs: list[str], options: JobOptions) -> Ranges:
    """Calibrate on INPUTS' first records and record the ranges in the model directory, for
    the graph PIPELINE runs (`albert-onnx calibrate`)."""
    sampled = replace(options, id_field=None)
    ranges = _measure(pipeline, make_plan(inputs, sampled), sampled)
    manifest = load_manifest(pipeline.model_dir)  # as it is now, not as the pipeline read it
    manifest.calibration[pipeline.precision] = ranges.to_dict()
    manifest.save(pipeline.model_dir)
    return ranges


def _measure(pipeline: Pipeline, plan: Plan, options: JobOptions) -> Ranges:
    """The ranges of the sample's vectors, as PIPELINE embeds them."""
    texts, source = sample(plan, options)
    vectors, _ = pipeline.embed_docs(pipeline.tokenize(texts))
    return Ranges.calibrate(vectors, source)
