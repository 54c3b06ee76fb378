"""Writer stage: shards written atomically while the run goes, one final file in input order.

Each window of the corpus becomes a shard (vectors, ids, bad lines) written to a temporary
name and renamed; `state.json` is replaced after the shard, so a kill at any moment
leaves only complete shards behind and `--resume` continues after the last one. The final
file is assembled from the shards (`formats.py`), sidecars first and the output last, and
`state.json` is removed before the shards: a kill at any point of the finish leaves either
a resumable run or a complete output, never a half of each.

The writer holds the output's lock from start to finish and never writes over the files it
is told to protect (the corpus, the model directory). It only writes: what the state's
`progress` means is the job's business.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from albert_onnx.errors import OptionError, OutputError
from albert_onnx.runtime.files import atomic_write, overlap, sidecar
from albert_onnx.runtime.formats import (
    FORMATS,
    RAGGED_FORMATS,
    write_errors_jsonl,
    write_ids_jsonl,
    write_npy,
    write_output,
)
from albert_onnx.runtime.options import Dtype, check_choice
from albert_onnx.runtime.output_lock import OutputLock

STATE_VERSION = 2


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
        if self.output.suffix not in FORMATS:
            raise OutputError(f"{output}: unknown output format (use {', '.join(FORMATS)})")
        if ragged and self.output.suffix not in RAGGED_FORMATS:
            raise OutputError(f"{output}: token vectors (pooling none) need .npz or .jsonl")
        if self.output.suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise OutputError(
                    f"{output}: .parquet needs pyarrow (albert-onnx[parquet])"
                ) from exc
        if resume and force:
            raise OptionError("--resume continues a run and --force replaces it: choose one")
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
                if overlap(mine, path):
                    raise OutputError(
                        f"{mine} would overwrite {what} ({path}); choose another output"
                    )

    @property
    def _state_file(self) -> Path:
        return self.parts / "state.json"

    def _open(self, resume: bool, force: bool) -> dict[str, Any]:
        if resume and self._state_file.is_file():
            return self._resumed()
        if resume and self.output.exists():
            # a finish killed after the output was renamed into place leaves shards without
            # a state: they are the complete output's, and nothing is left to resume
            if self.parts.exists():
                shutil.rmtree(self.parts)
            raise OutputError(
                f"{self.output} is already complete: there is no interrupted run to resume "
                "(use --force to embed again)"
            )
        # with --resume, shards without a state are a run killed before it wrote any
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
        atomic_write(self._state_file, lambda f: f.write(json.dumps(state).encode()))
        return state

    def _resumed(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_file.read_text(encoding="utf-8"))
            version, old = state.get("version"), dict(state["settings"])
            shards = [(int(s["rows"]), int(s["vector_rows"])) for s in state["shards"]]
            dict(state["progress"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OutputError(
                f"{self._state_file}: not a state this albert-onnx wrote ({exc}); use --force"
            ) from exc
        if version != STATE_VERSION:
            raise OutputError(
                f"{self.parts} was written by another albert-onnx version; use --force"
            )
        changed = [k for k in {*old, *self.settings} if old.get(k) != self.settings.get(k)]
        if changed:
            raise OutputError(
                f"{self.parts}: cannot resume, {', '.join(sorted(changed))} changed since the "
                "interrupted run; use --force to start over"
            )
        known = {f"{i:06d}" for i in range(len(shards))}
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
        atomic_write(self.parts / f"{name}.npy", lambda f: write_npy(f, array))
        meta = {"ids": ids, "errors": errors, "lengths": lengths}
        atomic_write(self.parts / f"{name}.json", lambda f: f.write(json.dumps(meta).encode()))
        self.state["shards"].append({"rows": len(ids), "vector_rows": len(array)})
        self.state["progress"] = progress
        atomic_write(self._state_file, lambda f: f.write(json.dumps(self.state).encode()))

    # -- reading the shards back (formats.Shards) -------------------------------------------

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.state["shards"])

    @property
    def vector_rows(self) -> int:
        return sum(s["vector_rows"] for s in self.state["shards"])

    def metas(self) -> Iterator[dict]:
        for i in range(len(self.state["shards"])):
            yield json.loads((self.parts / f"{i:06d}.json").read_text(encoding="utf-8"))

    def vectors(self) -> Iterator[np.ndarray]:
        for i, shard in enumerate(self.state["shards"]):
            mmap = "r" if shard["vector_rows"] else None  # an empty file cannot be mapped
            yield np.load(self.parts / f"{i:06d}.npy", mmap_mode=mmap)

    def ids(self) -> Iterator[list]:
        """Each shard's ids, in order."""
        return (meta["ids"] for meta in self.metas())

    def finish(self, dimension: int, id_kind: str, keep_errors: bool) -> list[Path]:
        """Assemble the final output and its sidecars, then remove the shards."""
        written = []
        if self.output.suffix == ".npy":
            atomic_write(self.ids_file, lambda f: write_ids_jsonl(f, self))
            written.append(self.ids_file)
        if keep_errors:
            atomic_write(self.errors_file, lambda f: write_errors_jsonl(f, self))
            written.append(self.errors_file)
        write_output(self.output, self, self.dtype, dimension, id_kind, self.ragged)
        self._state_file.unlink()  # first: shards without a state are never resumed
        shutil.rmtree(self.parts)
        return [self.output, *written]
