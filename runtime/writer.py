"""Writer stage: shards written atomically while the run goes, one final file in input order.

Each window of the corpus becomes a shard (vectors, ids, bad lines) written to a temporary
name and renamed; `state.json` is replaced after the shard, so a kill at any moment
leaves only complete shards behind and `--resume` continues after the last one. The final
file is assembled from the shards in a streaming pass (constant memory) and renamed into
place, so it is byte-for-byte the same whether or not the run was interrupted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = (".npy", ".npz", ".parquet", ".jsonl")
RAGGED_FORMATS = (".npz", ".jsonl")


class OutputError(ValueError):
    """The output cannot be written as asked (exists, wrong format, stale state)."""


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.name + suffix)


class ShardWriter:
    """Shards under `<output>.parts/`, then the final OUTPUT (.npy, .npz, .parquet, .jsonl)."""

    def __init__(
        self,
        output: Path,
        settings: dict[str, Any],
        *,
        dtype: str = "float32",
        ragged: bool = False,
        resume: bool = False,
        force: bool = False,
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
        self.dtype = np.dtype(dtype)
        self.ragged = ragged
        self.parts = sidecar(self.output, ".parts")
        self.settings = settings
        self.state = self._open(resume, force)

    def _open(self, resume: bool, force: bool) -> dict[str, Any]:
        state_file = self.parts / "state.json"
        if resume and state_file.is_file():
            state = json.loads(state_file.read_text(encoding="utf-8"))
            changed = [k for k in self.settings if state["settings"].get(k) != self.settings[k]]
            if changed:
                raise OutputError(
                    f"{self.parts}: cannot resume, {', '.join(changed)} changed since the "
                    "interrupted run; use --force to start over"
                )
            known = {f"{i:06d}" for i in range(len(state["shards"]))}
            for stray in self.parts.iterdir():  # partial shards of the killed run
                if stray.name != "state.json" and stray.name.split(".")[0] not in known:
                    stray.unlink()
            return state
        existing = [p for p in (self.output, self.parts) if p.exists()]
        if existing and not force:
            raise OutputError(
                f"{existing[0]} already exists; pass --resume to continue or --force to replace"
            )
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.parts.mkdir(parents=True)
        return {"settings": self.settings, "shards": [], "lines_done": 0, "counts": {}}

    @property
    def lines_done(self) -> int:
        return self.state["lines_done"]

    @property
    def counts(self) -> dict[str, int]:
        return self.state["counts"]

    def write_shard(
        self,
        ids: list,
        vectors: np.ndarray,
        lengths: np.ndarray | None,
        errors: list[dict],
        lines_done: int,
        counts: dict[str, int],
    ) -> None:
        name = f"{len(self.state['shards']):06d}"
        vectors = np.ascontiguousarray(vectors, dtype=self.dtype)
        _atomic_write(self.parts / f"{name}.npy", lambda f: np.save(f, vectors))
        meta = {
            "ids": ids,
            "errors": errors,
            "lengths": None if lengths is None else lengths.tolist(),
        }
        _atomic_write(self.parts / f"{name}.json", lambda f: f.write(json.dumps(meta).encode()))
        self.state["shards"].append({"rows": len(ids), "vector_rows": len(vectors)})
        self.state["lines_done"] = lines_done
        for key, value in counts.items():
            self.state["counts"][key] = self.state["counts"].get(key, 0) + value
        _atomic_write(self.parts / "state.json", lambda f: f.write(json.dumps(self.state).encode()))

    def _shards(self) -> Iterator[tuple[np.ndarray, dict]]:
        for i in range(len(self.state["shards"])):
            meta = json.loads((self.parts / f"{i:06d}.json").read_text(encoding="utf-8"))
            yield np.load(self.parts / f"{i:06d}.npy", mmap_mode="r"), meta

    def finish(self, dimension: int, keep_errors: bool) -> list[Path]:
        """Assemble the final output (and ids / errors sidecars); remove the shards."""
        rows = sum(s["vector_rows"] for s in self.state["shards"])
        written = [self.output]
        if self.format == ".npy":
            _atomic_write(self.output, lambda f: self._write_npy(f, rows, dimension))
            ids_file = sidecar(self.output, ".ids.jsonl")
            _atomic_write(ids_file, self._write_ids)
            written.append(ids_file)
        elif self.format == ".npz":
            _atomic_write(self.output, lambda f: self._write_npz(f, rows, dimension))
        elif self.format == ".jsonl":
            _atomic_write(self.output, self._write_jsonl)
        else:
            self._write_parquet(dimension)
        if keep_errors:
            errors_file = sidecar(self.output, ".errors.jsonl")
            _atomic_write(errors_file, self._write_errors)
            written.append(errors_file)
        shutil.rmtree(self.parts)
        return written

    def _write_npy(self, f, rows: int, dimension: int) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, dimension),
        }
        np.lib.format.write_array_header_2_0(f, header)
        for vectors, _ in self._shards():
            f.write(memoryview(np.ascontiguousarray(vectors)).cast("B"))

    def _write_ids(self, f) -> None:
        for _, meta in self._shards():
            f.write("".join(json.dumps(i) + "\n" for i in meta["ids"]).encode())

    def _write_errors(self, f) -> None:
        for _, meta in self._shards():
            f.write("".join(json.dumps(e) + "\n" for e in meta["errors"]).encode())

    def _all_ids(self) -> np.ndarray:
        ids = [i for _, meta in self._shards() for i in meta["ids"]]
        return np.asarray(ids) if ids else np.zeros(0, dtype=np.int64)

    def _write_npz(self, f, rows: int, dimension: int) -> None:
        import zipfile

        with zipfile.ZipFile(f, "w", allowZip64=True) as archive:
            with archive.open("embeddings.npy", "w", force_zip64=True) as member:
                self._write_npy(member, rows, dimension)
            with archive.open("ids.npy", "w", force_zip64=True) as member:
                np.save(member, self._all_ids())
            if self.ragged:
                lengths = [n for _, meta in self._shards() for n in meta["lengths"]]
                with archive.open("offsets.npy", "w", force_zip64=True) as member:
                    np.save(member, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def _write_jsonl(self, f) -> None:
        for vectors, meta in self._shards():
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

    def _write_parquet(self, dimension: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        value_type = pa.float16() if self.dtype == np.float16 else pa.float32()
        ids = self._all_ids()
        id_type = pa.string() if ids.dtype.kind == "U" else pa.int64()
        schema = pa.schema([("id", id_type), ("vector", pa.list_(value_type, dimension))])
        tmp = self.output.with_name(f".{self.output.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as parquet:
            for vectors, meta in self._shards():
                flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=value_type)
                column = pa.FixedSizeListArray.from_arrays(flat, dimension)
                parquet.write_table(
                    pa.table(
                        {"id": pa.array(meta["ids"], type=id_type), "vector": column}, schema=schema
                    )
                )
        os.replace(tmp, self.output)
