"""An output read back, whatever its format: its manifest (what made the vectors: the
model's fingerprint, the settings, the dtype and, for int8 and uint8, the ranges) and its
rows a chunk at a time, in bounded memory, so that an output larger than RAM can be
searched: a directory part by part (a row group at a time), a single file streamed
CHUNK_ROWS rows at a time, from a local path or any pyarrow filesystem."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from albert_onnx.errors import OutputError
from albert_onnx.runtime.io.formats import FORMATS
from albert_onnx.runtime.io.storage import Location, locate
from albert_onnx.runtime.jobs.commit import open_output
from albert_onnx.runtime.pipeline.quantize import Ranges, storage

CHUNK_ROWS = 16_384
NPROBES, REFINE = 20, 10  # a Lance index's search: partitions probed, candidates x refined
Rows = Iterator[tuple[Sequence, np.ndarray]]  # ids, vectors (n, width) as stored


@dataclass(frozen=True)
class Stored:
    """A complete output: its manifest, its rows in input order (`chunks()`), and for an
    indexed Lance output, its index's search (`nearest(query, k)`: ids, scores)."""

    location: Location
    manifest: dict[str, Any]
    chunks: Callable[[], Rows]
    nearest: Callable[[np.ndarray, int], tuple[list, np.ndarray]] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    @property
    def dtype(self) -> str:
        return self.settings["dtype"]

    @property
    def dimension(self) -> int:
        return int(self.settings["dimension"])

    @property
    def width(self) -> int:
        return storage(self.dtype, self.dimension)[1]

    @property
    def ranges(self) -> Ranges | None:
        found = self.manifest.get("ranges")
        return Ranges.from_dict(found) if found else None


def open_stored(spec: str) -> Stored:
    """The output SPEC names: a directory of parts with its `_manifest.json`, or a single
    file with its `OUTPUT.manifest.json`. One without a manifest is refused (incomplete, or
    written before outputs carried one)."""
    location = locate(spec)
    suffix = "." + location.name.rsplit(".", 1)[-1] if "." in location.name else ""
    if suffix not in FORMATS:
        manifest, parts = open_output(spec)
        stored = Stored(location, manifest,
                        lambda: ((ids, v) for ids, v, _ in parts.chunks()))  # fmt: skip
    else:
        sidecar = location.sibling(location.name + ".manifest.json")
        if not location.exists():
            raise OutputError(f"{spec}: no such output")
        if not sidecar.is_file():
            raise OutputError(
                f"{spec}: no {sidecar.name} beside it, which says what made its vectors "
                "(an output of an earlier albert-onnx, or a file copied without it)"
            )
        manifest = json.loads(sidecar.read_bytes())
        if suffix == ".lance":
            stored = _lance(location, manifest)
        elif suffix == ".jsonl":  # numbers: the stored dtype is the manifest's
            dtype = storage(manifest["settings"]["dtype"], 1)[0]
            stored = Stored(location, manifest, lambda: _jsonl(location, dtype))
        else:
            read = {".npy": _npy, ".npz": _npz, ".parquet": _parquet}[suffix]
            stored = Stored(location, manifest, lambda: read(location))
    if stored.settings.get("pooling") == "none":
        raise OutputError(f"{spec} holds token vectors; search needs one vector per record")
    return stored


class _Npy:
    """A .npy file read forward, so that any stream will do: its header, then its rows a
    few at a time."""

    def __init__(self, f: BinaryIO) -> None:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0  # fmt: skip
        self.shape, _, self.dtype = read(f)
        self.f = f

    def take(self, count: int) -> np.ndarray:
        row = self.shape[1:]
        data = self.f.read(count * int(np.prod(row, dtype=np.int64)) * self.dtype.itemsize)
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *row))

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.shape[0], CHUNK_ROWS):
            yield self.take(min(CHUNK_ROWS, self.shape[0] - start))


class _JsonLines(Sequence):
    """A chunk's ids as their JSON lines, each decoded when asked for: search keeps a few
    ids of each chunk, and decoding a million it does not keep would cost more than the
    scan."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [json.loads(line) for line in self.lines[index]]
        return json.loads(self.lines[index])


def _npy(location: Location) -> Rows:
    ids_file = location.sibling(location.name + ".ids.jsonl")
    with location.open_read() as f, ids_file.open_read() as ids:
        for vectors in _Npy(f).chunks():
            yield _JsonLines(list(itertools.islice(ids, len(vectors)))), vectors


def _npz(location: Location) -> Rows:
    with (
        location.open_read() as f,
        zipfile.ZipFile(f) as archive,
        archive.open("embeddings.npy") as vectors,
        archive.open("ids.npy") as ids_file,
    ):
        ids = _Npy(ids_file)
        for chunk in _Npy(vectors).chunks():
            yield ids.take(len(chunk)).tolist(), chunk


def _lance(location: Location, manifest: dict[str, Any]) -> Stored:
    from albert_onnx.runtime.io import lance_dataset as lance

    def nearest(query: np.ndarray, k: int) -> tuple[list, np.ndarray]:
        return lance.nearest(location, query, k, NPROBES, REFINE)

    return Stored(location, manifest, lambda: lance.lance_rows(location, CHUNK_ROWS),
                  nearest if lance.has_index(location) else None)  # fmt: skip


def _parquet(location: Location) -> Rows:
    import pyarrow.parquet as pq

    with location.open_read() as f, pq.ParquetFile(f) as parquet:
        for batch in parquet.iter_batches(CHUNK_ROWS, use_threads=False):
            column = batch.column("vector")
            values = column.flatten().to_numpy(zero_copy_only=False)
            yield batch.column("id").to_pylist(), values.reshape(len(batch), -1)


def _jsonl(location: Location, dtype: np.dtype) -> Rows:
    with location.open_read() as f:
        while lines := list(itertools.islice(f, CHUNK_ROWS)):
            rows = [json.loads(line) for line in lines]
            yield [r["id"] for r in rows], np.array([r["vector"] for r in rows], dtype=dtype)
