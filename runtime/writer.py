"""Writer stage: shards written atomically while the run goes, one final file in input order.

Each window of the corpus becomes a shard (vectors, ids, bad lines) written to a temporary
name and renamed; `state.json` is replaced after the shard, so a kill at any moment
leaves only complete shards behind and `--resume` continues after the last one. The final
file is assembled from the shards in a streaming pass (constant memory) and renamed into
place, so it is byte-for-byte the same whether or not the run was interrupted.

The writer holds the output's lock from start to finish, never writes over the files it is
told to protect (the corpus, the model directory), and leaves no temporary file behind
when a write fails. It only writes: what the state's `progress` means is the job's business.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from albert_onnx.errors import OutputError
from albert_onnx.runtime.options import Dtype, check_choice
from albert_onnx.runtime.output_lock import OutputLock

FORMATS = (".npy", ".npz", ".parquet", ".jsonl")
RAGGED_FORMATS = (".npz", ".jsonl")
STATE_VERSION = 2


def sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.name + suffix)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling to write, renamed onto PATH at the end. On failure it is removed,
    and an OSError that names no file (a failed write) is made to name PATH."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _overlap(a: Path, b: Path) -> bool:
    """A and B are the same file, or one lies inside the other (links resolved)."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    if a == b or a in b.parents or b in a.parents:
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _write_npy_header(f: BinaryIO, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(f, header)


def _write_raw(f: BinaryIO, array: np.ndarray) -> None:
    if array.size:  # a memoryview of a zero-size array cannot be cast to bytes
        f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


class ShardWriter:
    """Shards under `<output>.parts/`, then the final OUTPUT (.npy, .npz, .parquet, .jsonl).

    Use it as a context manager: the output's lock is held until the block ends.
    """

    def __init__(
        self,
        output: Path,
        settings: dict[str, Any],
        *,
        dtype: Dtype = "float32",
        ragged: bool = False,
        resume: bool = False,
        force: bool = False,
        protect: dict[str, Path] | None = None,
    ) -> None:
        self.output = Path(output)
        self.format = self.output.suffix
        if self.format not in FORMATS:
            raise OutputError(f"{output}: unknown output format (use {', '.join(FORMATS)})")
        if ragged and self.format not in RAGGED_FORMATS:
            raise OutputError(f"{output}: token vectors (pooling none) need .npz or .jsonl")
        if self.format == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise OutputError(
                    f"{output}: .parquet needs pyarrow (albert-onnx[parquet])"
                ) from exc
        self.dtype = np.dtype(check_choice("dtype", dtype, Dtype))
        self.ragged = ragged
        self.parts = sidecar(self.output, ".parts")
        self.ids_file = sidecar(self.output, ".ids.jsonl")
        self.errors_file = sidecar(self.output, ".errors.jsonl")
        self._lock = OutputLock(sidecar(self.output, ".lock"), self.output)
        self._refuse_overlaps(protect or {})
        if self.output.is_dir():
            raise OutputError(f"{output} is a directory; name the output file (for example v.npy)")
        self.settings = settings
        self._lock.acquire()
        try:
            self.state = self._open(resume, force)
        except BaseException:
            self._lock.release()
            raise

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self._lock.release()

    def _refuse_overlaps(self, protect: dict[str, Path]) -> None:
        ours = (self.output, self.parts, self.ids_file, self.errors_file, self._lock.path)
        for what, path in protect.items():
            for mine in ours:
                if _overlap(mine, path):
                    raise OutputError(
                        f"{mine} would overwrite {what} ({path}); choose another output"
                    )

    def _open(self, resume: bool, force: bool) -> dict[str, Any]:
        state_file = self.parts / "state.json"
        if resume and state_file.is_file():
            return self._resumed(state_file)
        if resume and not self.parts.exists() and self.output.exists():
            raise OutputError(
                f"{self.output} is already complete: there is no interrupted run to resume "
                "(use --force to embed again)"
            )
        # a run killed before its first state was written left nothing worth keeping
        existing = [p for p in (self.output, self.parts) if p.exists() and not resume]
        if existing and not force:
            raise OutputError(
                f"{existing[0]} already exists; pass --resume to continue or --force to replace"
            )
        for path in (self.output, self.parts, self.ids_file, self.errors_file):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.parts.mkdir(parents=True)
        state = {"version": STATE_VERSION, "settings": self.settings, "shards": [], "progress": {}}
        _atomic_write(state_file, lambda f: f.write(json.dumps(state).encode()))
        return state

    def _resumed(self, state_file: Path) -> dict[str, Any]:
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise OutputError(f"{state_file}: unreadable ({exc}); use --force") from exc
        if state.get("version") != STATE_VERSION:
            raise OutputError(
                f"{self.parts} was written by another albert-onnx version; use --force"
            )
        old = state["settings"]
        changed = [k for k in {*old, *self.settings} if old.get(k) != self.settings.get(k)]
        if changed:
            raise OutputError(
                f"{self.parts}: cannot resume, {', '.join(sorted(changed))} changed since the "
                "interrupted run; use --force to start over"
            )
        known = {f"{i:06d}" for i in range(len(state["shards"]))}
        for stray in self.parts.iterdir():  # partial shards of the killed run
            if stray.name != "state.json" and stray.name.split(".")[0] not in known:
                stray.unlink()
        return state

    @property
    def progress(self) -> dict[str, Any]:
        """What the job recorded with the last shard ({} before the first)."""
        return self.state["progress"]

    def write_shard(
        self,
        ids: list,
        vectors: np.ndarray | list[np.ndarray],
        errors: list[dict],
        progress: dict[str, Any],
    ) -> None:
        """Write one window's rows (pooled vectors, or each row's token vectors if ragged)."""
        name = f"{len(self.state['shards']):06d}"
        lengths = None
        if self.ragged:
            lengths = [len(v) for v in vectors]
            width = vectors[0].shape[1] if lengths else 0
            vectors = np.concatenate(vectors) if lengths else np.zeros((0, width))
        array = np.ascontiguousarray(vectors, dtype=self.dtype)
        _atomic_write(self.parts / f"{name}.npy", lambda f: np.save(f, array))
        meta = {"ids": ids, "errors": errors, "lengths": lengths}
        _atomic_write(self.parts / f"{name}.json", lambda f: f.write(json.dumps(meta).encode()))
        self.state["shards"].append({"rows": len(ids), "vector_rows": len(array)})
        self.state["progress"] = progress
        _atomic_write(self.parts / "state.json", lambda f: f.write(json.dumps(self.state).encode()))

    def _metas(self) -> Iterator[dict]:
        for i in range(len(self.state["shards"])):
            yield json.loads((self.parts / f"{i:06d}.json").read_text(encoding="utf-8"))

    def _vectors(self) -> Iterator[np.ndarray]:
        for i, shard in enumerate(self.state["shards"]):
            mmap = "r" if shard["vector_rows"] else None  # an empty file cannot be mapped
            yield np.load(self.parts / f"{i:06d}.npy", mmap_mode=mmap)

    def ids(self) -> Iterator[list]:
        """Each shard's ids, in order."""
        return (meta["ids"] for meta in self._metas())

    def finish(self, dimension: int, id_kind: str, keep_errors: bool) -> list[Path]:
        """Assemble the final output (and ids / errors sidecars); remove the shards."""
        rows = sum(s["vector_rows"] for s in self.state["shards"])
        written = [self.output]
        if self.format == ".npy":
            _atomic_write(self.output, lambda f: self._write_npy(f, rows, dimension))
            _atomic_write(self.ids_file, self._write_ids_jsonl)
            written.append(self.ids_file)
        elif self.format == ".npz":
            _atomic_write(self.output, lambda f: self._write_npz(f, rows, dimension, id_kind))
        elif self.format == ".jsonl":
            _atomic_write(self.output, self._write_jsonl)
        else:
            self._write_parquet(dimension, id_kind)
        if keep_errors:
            _atomic_write(self.errors_file, self._write_errors)
            written.append(self.errors_file)
        shutil.rmtree(self.parts)
        return written

    def _write_npy(self, f: BinaryIO, rows: int, dimension: int) -> None:
        _write_npy_header(f, self.dtype, (rows, dimension))
        for vectors in self._vectors():
            _write_raw(f, vectors)

    def _write_ids_jsonl(self, f: BinaryIO) -> None:
        for ids in self.ids():
            f.write("".join(json.dumps(i) + "\n" for i in ids).encode())

    def _write_errors(self, f: BinaryIO) -> None:
        for meta in self._metas():
            f.write("".join(json.dumps(e) + "\n" for e in meta["errors"]).encode())

    def _write_ids_npy(self, f: BinaryIO, id_kind: str) -> None:
        """ids as int64, or as fixed-width unicode (never a pickled object array), streamed."""
        count = sum(s["rows"] for s in self.state["shards"])
        if id_kind == "int":
            dtype = np.dtype(np.int64)
        else:
            width = max((len(i) for ids in self.ids() for i in ids), default=0)
            dtype = np.dtype(f"<U{max(width, 1)}")
        _write_npy_header(f, dtype, (count,))
        for ids in self.ids():
            _write_raw(f, np.array(ids, dtype=dtype))

    def _write_npz(self, f: BinaryIO, rows: int, dimension: int, id_kind: str) -> None:
        with zipfile.ZipFile(f, "w", allowZip64=True) as archive:
            with archive.open("embeddings.npy", "w", force_zip64=True) as member:
                self._write_npy(member, rows, dimension)
            with archive.open("ids.npy", "w", force_zip64=True) as member:
                self._write_ids_npy(member, id_kind)
            if self.ragged:
                lengths = [n for meta in self._metas() for n in meta["lengths"]]
                with archive.open("offsets.npy", "w", force_zip64=True) as member:
                    np.save(member, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def _write_jsonl(self, f: BinaryIO) -> None:
        for vectors, meta in zip(self._vectors(), self._metas(), strict=True):
            if self.ragged:
                bounds = np.cumsum([0, *meta["lengths"]])
                rows = [vectors[a:b].tolist() for a, b in itertools.pairwise(bounds)]
            else:
                rows = vectors.tolist()
            f.write(
                "".join(
                    json.dumps({"id": i, "vector": v}) + "\n"
                    for i, v in zip(meta["ids"], rows, strict=True)
                ).encode()
            )

    def _write_parquet(self, dimension: int, id_kind: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        value_type = pa.float16() if self.dtype == np.float16 else pa.float32()
        id_type = pa.int64() if id_kind == "int" else pa.string()
        schema = pa.schema([("id", id_type), ("vector", pa.list_(value_type, dimension))])
        with _replacing(self.output) as tmp, pq.ParquetWriter(tmp, schema) as parquet:
            for vectors, ids in zip(self._vectors(), self.ids(), strict=True):
                flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=value_type)
                column = pa.FixedSizeListArray.from_arrays(flat, dimension)
                table = pa.table({"id": pa.array(ids, type=id_type), "vector": column})
                parquet.write_table(table.cast(schema))
