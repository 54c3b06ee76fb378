"""Run a producer ahead of its consumer in a background thread, with bounded look-ahead.

Tokenization (Rust, releases the GIL) thus overlaps with inference (onnxruntime, also
outside the GIL); the bound keeps memory constant however large the corpus is.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ITEMS as produced by a worker thread at most DEPTH items in advance.

    An exception in the worker is re-raised in the consumer at the point it occurred.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # handed to the consumer, not lost in the thread
            buffer.put(exc)

    worker = threading.Thread(target=produce, daemon=True, name="albert-onnx-prefetch")
    worker.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
