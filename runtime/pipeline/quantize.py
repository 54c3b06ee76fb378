"""The last stage: pooled vectors in the precision they are kept in.

- float32, float16: cast.
- int8, uint8: each dimension's range (its minimum and maximum over a calibration sample)
  cut into 255 steps, a value's step floored and clipped to 0..255 (int8: minus 128), as
  sentence-transformers' `quantize_embeddings` does (6.x); the ranges are kept with the
  output, so that queries are quantized the same way later.
- binary, ubinary: one bit per dimension, set where the value is above 0, packed eight to
  a byte, first dimension in the high bit (`np.packbits`): 48 bytes for 384 dimensions.
  ubinary is the bytes as uint8, binary the same bytes minus 128 as int8, as
  sentence-transformers gives them. Each row is packed on its own, so a dimension that is
  not a multiple of 8 pads its last byte with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from albert_onnx.errors import OptionError
from albert_onnx.runtime.options import Dtype

CALIBRATED = ("int8", "uint8")
PACKED = ("binary", "ubinary")
_NUMPY = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
          "binary": np.int8, "ubinary": np.uint8}  # fmt: skip


def storage(dtype: Dtype, dimension: int) -> tuple[np.dtype, int]:
    """The numpy type and the number of values per vector that DTYPE keeps."""
    width = (dimension + 7) // 8 if dtype in PACKED else dimension
    return np.dtype(_NUMPY[dtype]), width


def arrow_type(dtype: Dtype):
    """The Arrow value type of DTYPE's vectors (part files, Parquet and Lance outputs)."""
    import pyarrow as pa

    return pa.from_numpy_dtype(_NUMPY[dtype])


@dataclass(frozen=True)
class Ranges:
    """Each dimension's calibrated range, and what it was calibrated on."""

    low: np.ndarray  # (dimension,) float32
    high: np.ndarray
    source: str

    @classmethod
    def calibrate(cls, vectors: np.ndarray, source: str) -> Ranges:
        """The ranges of VECTORS (n, dimension), n >= 1."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or not len(vectors):
            raise OptionError(f"calibration needs vectors to measure, and {source} gave none")
        return cls(vectors.min(axis=0), vectors.max(axis=0), source)

    @classmethod
    def of(cls, ranges: Any, dimension: int, source: str = "the caller's ranges") -> Ranges:
        """RANGES as sentence-transformers takes them (an array (2, dimension): minima, then
        maxima), or already Ranges; checked against DIMENSION."""
        if isinstance(ranges, Ranges):
            found = ranges
        else:
            array = np.asarray(ranges, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != 2:
                raise OptionError(f"ranges must be an array (2, dimension), not {array.shape}")
            found = cls(array[0], array[1], source)
        if found.low.shape != (dimension,) or found.high.shape != (dimension,):
            raise OptionError(
                f"{found.source} has {found.low.shape[0]} dimensions and the model {dimension}"
            )
        if not np.all(found.high >= found.low):
            raise OptionError(f"{found.source}: a range's maximum is below its minimum")
        return found

    @property
    def array(self) -> np.ndarray:
        return np.vstack([self.low, self.high])

    def to_dict(self) -> dict[str, Any]:
        """As JSON keeps them: float32 values written as the shortest decimals that read
        back to the same float32s."""
        return {"source": self.source,
                "low": [float(str(v)) for v in self.low],
                "high": [float(str(v)) for v in self.high]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ranges:
        low = np.asarray(data["low"], dtype=np.float32)
        return cls(low, np.asarray(data["high"], dtype=np.float32), str(data["source"]))


def quantize(vectors: np.ndarray, dtype: Dtype, ranges: Ranges | None = None) -> np.ndarray:
    """VECTORS (n, dimension) in DTYPE (see the module docstring); RANGES for int8/uint8."""
    if dtype in PACKED:
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if dtype == "binary" else packed
    if dtype in CALIBRATED:
        if ranges is None:
            raise OptionError(f"{dtype} vectors need calibrated ranges")
        steps = (ranges.high - ranges.low) / np.float32(255)
        steps = np.where(steps == 0, np.float32(1), steps)  # a constant dimension
        scaled = (np.asarray(vectors, dtype=np.float32) - ranges.low) / steps
        levels = np.clip(np.floor(scaled), 0, 255)
        return levels.astype(np.uint8) if dtype == "uint8" else (levels - 128).astype(np.int8)
    return np.asarray(vectors, dtype=_NUMPY[dtype])


def unpack(bits: np.ndarray, dtype: Dtype, dimension: int) -> np.ndarray:
    """Packed vectors back to one 0/1 value per dimension (what rescoring multiplies)."""
    raw = bits.view(np.uint8) if dtype == "ubinary" else (bits.astype(np.int16) + 128)
    return np.unpackbits(raw.astype(np.uint8), axis=-1, count=dimension)
