"""An exclusive lock on an output for the whole run, so two runs can never interleave
their shards or replace each other's files.

It is an OS lock (flock) on a file beside the output that holds the owner's pid: the
kernel releases it when the owner exits or is killed, SIGKILL included, so a dead run never
leaves a stale lock behind. The file is removed by its owner when the run ends; a process
that locked a file just removed that way notices (the path no longer names its file) and
tries again.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from albert_onnx.errors import OutputError


class OutputLock:
    def __init__(self, path: Path, output: Path) -> None:
        self.path, self.output = path, output
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                # O_NOFOLLOW: a link planted at the lock's name must not get its target emptied
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as exc:
                raise OutputError(
                    f"{self.output}: cannot write there ({exc.strerror} for its lock file "
                    f"{self.path})"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(
                    f"{self.output} is being written by another run (process {holder}, lock "
                    f"{self.path}); wait for it to finish or stop it first"
                ) from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # locked a file its owner had just removed: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: see the module docstring
        os.close(self._fd)
        self._fd = None
