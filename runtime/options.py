"""The runtime's choices as Literal types, their checks, and the two options objects that
every front builds on: `ModelOptions` (how to run a model) and `JobOptions` (how a corpus
job reads and writes). Each is checked once, where it is made; defaults live here.

The CLI uses the same Literal types (typer turns them into choices) and takes its defaults
from these objects, so the API and the command line accept exactly the same values and an
API caller gets the same clear error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from albert_onnx.errors import OptionError

Provider = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "int8", "fp16"]
Pooling = Literal["mean", "cls", "max", "none"]
LongTexts = Literal["truncate", "chunk"]
OnError = Literal["raise", "skip"]
Dtype = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]  # pipeline/quantize


def check_choice(name: str, value: Any, allowed: Any) -> Any:
    """VALUE if it is one of the Literal type ALLOWED's values, else an OptionError."""
    choices = get_args(allowed)
    if value not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def check_field(name: str, value: Any) -> str:
    """VALUE as the name of a record's field: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise OptionError(f"{name} must be a field name, not {value!r}")
    return value


def check_positive(name: str, value: Any) -> int:
    """VALUE as an int >= 1, else an OptionError (0 never silently means 'the default')."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value


WINDOW_TEXTS = 4096  # texts sorted by length together; a part file's row group
PART_ROWS = 65_536  # Parquet inputs: whole row groups, grouped up to this many rows a part
PART_BYTES = 32 << 20  # JSONL and text inputs: a part is the lines starting in this many bytes
CALIBRATION_TEXTS = 10_000  # int8 and uint8 vectors: the records their ranges are measured on


@dataclass(frozen=True)
class ModelOptions:
    """How to run a model, checked once: what `Embedder`, the corpus job, the Ray workers and
    the server build their pipeline from (`runtime/pipeline/pipeline.py`)."""

    model: str | Path | None = None  # default: $ALBERT_ONNX_MODEL, else the shipped model
    provider: Provider = "auto"
    precision: Precision = "auto"
    pooling: Pooling | None = None  # default: the model's
    normalize: bool | None = None  # default: the model's
    max_batch_tokens: int | None = None  # default: by provider
    long_texts: LongTexts = "truncate"
    threads: int | None = None  # default and maximum: the cores this process may use
    device_id: int | None = None  # a CUDA device; naming one means provider cuda

    def __post_init__(self) -> None:
        check_choice("provider", self.provider, Provider)
        check_choice("precision", self.precision, Precision)
        if self.pooling is not None:
            check_choice("pooling", self.pooling, Pooling)
        check_choice("long_texts", self.long_texts, LongTexts)
        if self.long_texts == "chunk" and self.pooling == "none":
            raise OptionError("long_texts='chunk' pools windows; it cannot return token vectors")
        if self.max_batch_tokens is not None:
            check_positive("max_batch_tokens", self.max_batch_tokens)
        if self.threads is not None:
            check_positive("threads", self.threads)
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise OptionError(f"normalize must be True, False or None, not {self.normalize!r}")
        device_id = self.device_id
        if device_id is not None:
            if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
                raise OptionError(f"device_id must be a GPU index (0, 1, ...), not {device_id!r}")
            if self.provider == "cpu":
                raise OptionError("device_id chooses a GPU; it has no meaning with provider='cpu'")
            if self.provider == "auto":  # a GPU was named: running on the CPU would be silent
                object.__setattr__(self, "provider", "cuda")


@dataclass(frozen=True)
class JobOptions:
    """How a corpus job reads its input and writes its output, checked once; with the
    pipeline's settings these are what a resumed run must share with the interrupted one."""

    text_field: str = "text"
    id_field: str | None = None  # default: line numbers (NAME:LINE for several files)
    on_error: OnError = "raise"
    dtype: Dtype = "float32"
    window_texts: int = WINDOW_TEXTS
    part_rows: int = PART_ROWS
    part_bytes: int = PART_BYTES
    calibration: str | None = None  # int8/uint8: a file to calibrate on (default: the corpus)
    calibration_texts: int = CALIBRATION_TEXTS
    keep_text: bool = False  # the text beside its vector (Parquet and Lance outputs, parts)
    index: bool = False  # a Lance output: build an ANN index on its vectors

    def __post_init__(self) -> None:
        check_field("text_field", self.text_field)
        if self.id_field is not None:
            check_field("id_field", self.id_field)
        check_choice("on_error", self.on_error, OnError)
        check_choice("dtype", self.dtype, Dtype)
        for name in ("window_texts", "part_rows", "part_bytes", "calibration_texts"):
            check_positive(name, getattr(self, name))
        for name in ("keep_text", "index"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.calibration is not None:
            if self.dtype not in ("int8", "uint8"):
                raise OptionError(
                    f"a calibration file sets int8 and uint8 ranges; dtype is {self.dtype}"
                )
            object.__setattr__(self, "calibration", str(self.calibration))

    def settings(self) -> dict[str, Any]:
        return asdict(self)
