"""Local file-system care for every output: a file appears whole or not at all (through a
temporary sibling of its own name, so that two writers of the same file, a task and its
retry, never share one), a failed write leaves no temporary file and names the file it was
writing, and no output may overlap an input."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.name + suffix)


def fsync_dir(directory: Path) -> None:
    """Make a rename in DIRECTORY durable (it lives in the directory, not the file)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling to write, renamed onto PATH at the end. On failure it is removed,
    and an OSError that names no file (a failed write) is made to name PATH, keeping its
    reason (a library's OSError may carry a message and no errno)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise OSError(exc.errno, reason, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def overlap(a: Path, b: Path) -> bool:
    """A and B are the same file, or one lies inside the other (links resolved)."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    if a == b or a in b.parents or b in a.parents:
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)
