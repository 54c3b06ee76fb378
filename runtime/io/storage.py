"""Where inputs and outputs live: a local path, or a URL of any filesystem pyarrow supports
(`s3://`, `gs://`, `hdfs://`, `file://`), reached through `pyarrow.fs` with its own
credentials chain (for S3: the AWS environment variables, profiles and instance roles, and
`AWS_ENDPOINT_URL` or `?endpoint_override=` for MinIO and other S3-protocol servers).

A `Location` is a filesystem and a path on it. Local files keep Python's own fast paths
(buffered files, `os.replace`, fsync); every other filesystem goes through pyarrow. A file
is written whole or not at all either way: on a local filesystem through a temporary
sibling renamed into place; on object storage by one upload of a finished local temporary
file, which the store makes visible only when it is complete.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyarrow import fs as pafs

from albert_onnx.errors import CorpusError
from albert_onnx.runtime.io.files import fsync_dir, replacing

READ_BUFFER = 1 << 20


def is_url(spec: str) -> bool:
    return "://" in spec


@dataclass(frozen=True)
class Location:
    """A path on a filesystem. `uri` is how the user named it (shown in messages); `spec`
    adds the URL's options (`?endpoint_override=...`), so that `locate(spec)` finds it
    again anywhere, in a few bytes (a Ray worker)."""

    fs: pafs.FileSystem
    path: str
    uri: str
    query: str = ""  # the URL's options, with their "?"

    @property
    def spec(self) -> str:
        return self.uri + self.query

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.uri

    def child(self, name: str) -> Location:
        return Location(
            self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.uri.rstrip('/')}/{name}",
            self.query,
        )  # fmt: skip

    def sibling(self, name: str) -> Location:
        """NAME in the same directory."""
        path, uri = self.path.rstrip("/"), self.uri.rstrip("/")
        return Location(
            self.fs, f"{path.rsplit('/', 1)[0]}/{name}", f"{uri.rsplit('/', 1)[0]}/{name}",
            self.query,
        )  # fmt: skip

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def open_read(self) -> BinaryIO:
        """A buffered, seekable reader."""
        if self.local:
            return open(self.path, "rb", buffering=READ_BUFFER)
        return io.BufferedReader(self.fs.open_input_file(self.path), READ_BUFFER)  # type: ignore[arg-type]

    def read_bytes(self) -> bytes:
        with self.open_read() as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        self.write_atomic(lambda f: f.write(data))

    def write_atomic(self, write: Callable[[BinaryIO], object]) -> None:
        """Write the file whole or not at all (see `writing`)."""
        with self.writing() as path, open(path, "wb") as f:
            write(f)

    @contextmanager
    def writing(self) -> Iterator[str]:
        """A local path to write, made this location at the end, whole: on a local
        filesystem a temporary sibling renamed into place; elsewhere a temporary file in
        $TMPDIR, uploaded in one piece (the object appears when the upload completes). If
        the block fails, nothing appears."""
        if self.local:
            with replacing(Path(self.path)) as tmp:
                yield str(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            return
        handle, tmp = tempfile.mkstemp(prefix="albert-onnx-", suffix=f"-{self.name}")
        os.close(handle)
        try:
            yield tmp
            pafs.copy_files(tmp, self.path, destination_filesystem=self.fs)
        finally:
            os.unlink(tmp)

    def delete(self) -> None:
        info = self.info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type != pafs.FileType.NotFound:
            self.fs.delete_file(self.path)

    def make_dir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def entries(self, recursive: bool = False) -> list[pafs.FileInfo]:
        """What a directory holds (nothing if it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        return self.fs.get_file_info(selector)

    def sync(self) -> None:
        """Make the renames in this local directory durable (object stores need nothing)."""
        if self.local:
            fsync_dir(Path(self.path))


def locate(spec: str | Path) -> Location:
    """SPEC, a local path or a URL, as a Location. A URL whose filesystem pyarrow cannot
    reach (an unknown scheme, a missing driver) is one sentence."""
    text = str(spec)
    if not is_url(text):
        path = os.path.abspath(os.path.expanduser(text))
        return Location(pafs.LocalFileSystem(), path, text)
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise CorpusError(f"{text}: cannot reach this location ({exc})") from exc
    uri, mark, query = text.partition("?")
    return Location(filesystem, path, uri, mark + query)
