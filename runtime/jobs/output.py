"""Where a job writes, decided before anything is read or written: a directory of parts
(any name without a single-file suffix, local or a URL), or one file (.npy, .npz, .parquet,
.jsonl) assembled from the parts in `OUTPUT.parts/`. A local output is locked for the whole
run (`output_lock.py`) and may not overlap what it would overwrite: an input, a directory
the inputs were found in, the model directory. Object storage has no locks: one run per
output there is the caller's to ensure.
"""

from __future__ import annotations

from pathlib import Path

from albert_onnx.errors import OutputError
from albert_onnx.runtime.io.files import overlap, sidecar
from albert_onnx.runtime.io.formats import FORMATS, RAGGED_FORMATS, TEXT_FORMATS
from albert_onnx.runtime.io.lance_dataset import VERSIONS
from albert_onnx.runtime.io.output_lock import OutputLock
from albert_onnx.runtime.io.storage import Location, locate
from albert_onnx.runtime.jobs.state import MANIFEST

SIDECARS = (".ids.jsonl", ".errors.jsonl", ".manifest.json")  # OUTPUT + these


class Target:
    """The output of a job; a context manager that holds its lock."""

    def __init__(self, output: str | Path, *, ragged: bool, protect: list[tuple[str, str]],
                 keep_text: bool = False, index: bool = False) -> None:  # fmt: skip
        self.location = locate(output)
        suffix = "." + self.location.name.rsplit(".", 1)[-1] if "." in self.location.name else ""
        self.single = suffix in FORMATS
        if suffix and not self.single and suffix != ".parts":
            raise OutputError(
                f"{output}: unknown output format (use {', '.join(FORMATS)}, or a directory "
                "name for a directory of Parquet parts)"
            )
        if ragged and self.single and suffix not in RAGGED_FORMATS:
            raise OutputError(f"{output}: token vectors (pooling none) need .npz or .jsonl")
        if keep_text and self.single and suffix not in TEXT_FORMATS:
            raise OutputError(
                f"{output}: --keep-text writes the texts beside their vectors in "
                f"{', '.join(TEXT_FORMATS)} outputs and directories of parts, not {suffix}"
            )
        self.lance = suffix == ".lance"  # a dataset, and so a directory: written at commit
        if index and not self.lance:
            raise OutputError(f"{output}: --index builds a Lance index; name a .lance output")
        if self.single and not self.lance and self.location.is_dir():
            raise OutputError(f"{output} is a directory; name the output file (for example v.npy)")
        if not self.single and self.location.is_file():
            raise OutputError(f"{output} is a file; a directory output needs a directory name")
        self.parts = self.location.sibling(self.location.name + ".parts") if self.single \
            else self.location  # fmt: skip
        self.sidecars = (
            [self.location.sibling(self.location.name + s) for s in SIDECARS]
            if self.single else []
        )  # fmt: skip
        self._lock = None
        if self.location.local:
            lock = sidecar(Path(self.location.path), ".lock")
            self._refuse_overlaps(protect, lock)
            self._lock = OutputLock(lock, Path(self.location.path))

    @property
    def complete(self) -> Location:
        """What exists once the output is complete."""
        if self.lance:  # Lance commits its manifest last: a dataset without one is unfinished
            return self.location.child(VERSIONS)
        return self.location if self.single else self.location.child(MANIFEST)

    def _refuse_overlaps(self, protect: list[tuple[str, str]], lock: Path) -> None:
        """PROTECT: (what, where) that no file of this output may be, hold or lie in."""
        ours = [Path(self.location.path), Path(self.parts.path), lock]
        ours += [Path(s.path) for s in self.sidecars]
        for what, spec in protect:
            where = locate(spec)
            if not where.local:
                continue
            for mine in ours:
                if overlap(mine, Path(where.path)):
                    raise OutputError(
                        f"{mine} would overwrite {what} ({spec}); choose another output"
                    )

    def clear_single(self) -> None:
        """Remove a single-file output and its sidecars (a forced run replaces them)."""
        for path in (self.location, *self.sidecars):
            if path.is_file() or (self.lance and path is self.location):
                path.delete()

    def __enter__(self) -> Target:
        if self._lock is not None:
            self._lock.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        if self._lock is not None:
            self._lock.release()
