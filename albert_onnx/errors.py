"""Every error albert-onnx raises on purpose, under one base, `AlbertOnnxError`.

A caller (the CLI, a server, a Ray job) catches `AlbertOnnxError` and shows its message,
which is one sentence naming the file, line or option at fault. The value and type errors
also derive from `ValueError` / `TypeError`, so code written against the built-in types
keeps working. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AlbertOnnxError(Exception):
    """Base of every error albert-onnx raises for the user; the message is meant for them."""


class OptionError(AlbertOnnxError, ValueError):
    """An option given to the API or the CLI that is not allowed (checked where received)."""


class InputError(AlbertOnnxError, ValueError):
    """A text given to the API that cannot be embedded; the message names its index."""


class InputTypeError(InputError, TypeError):
    """A text given to the API that is not a string; the message names its index."""


class ManifestError(AlbertOnnxError, ValueError):
    """A model directory that cannot be used as it is."""


class ProviderError(AlbertOnnxError, RuntimeError):
    """An execution provider that was asked for and does not work here; says why."""


class OutOfMemoryError(ProviderError):
    """A batch that did not fit in the device's memory (the embedder retries smaller ones)."""


class CorpusError(AlbertOnnxError, ValueError):
    """A line of a corpus that cannot be embedded: `FILE:LINE: what is wrong`."""


class OutputError(AlbertOnnxError, ValueError):
    """An output that cannot be written as asked (exists, locked, overlaps the input, stale)."""


class ExportError(AlbertOnnxError, RuntimeError):
    """An export that cannot go on; the message is one sentence meant for the user."""


class AlbertOnnxWarning(UserWarning):
    """Something the user should know that does not stop the work (clamped threads, a
    script the model's vocabulary does not cover)."""
