"""Windows of a stream, tokenized ahead: the one streaming loop that the corpus job and
`Embedder.stream` share.

A window is what is length-sorted together (more texts pad less but hold more memory) and,
in the corpus job, what one row group of a part file holds. The next window is grouped and
tokenized in a background thread while the current one runs: tokenization (Rust) and
inference (onnxruntime) both release the GIL, and the bounded look-ahead keeps memory constant
however large the corpus is.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def windows(
    items: Iterable[T], size: int, counts: Callable[[T], bool] = lambda _: True
) -> Iterator[list[T]]:
    """ITEMS in consecutive lists holding SIZE counted items each (the last one fewer).

    A list is handed on as soon as its SIZE-th counted item arrives, so a caller that reads
    its source's position at that moment gets the position just after that item.
    """
    window: list[T] = []
    counted = 0
    for item in items:
        window.append(item)
        counted += counts(item)
        if counted == size:
            yield window
            window, counted = [], 0
    if window:
        yield window


def ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ITEMS as produced by a worker thread: DEPTH finished items wait in the queue
    while it produces the next, so it runs at most DEPTH + 1 items ahead of the consumer.

    An exception in the worker is re-raised in the consumer; when the consumer stops early
    (an error, a break) the worker stops too instead of blocking forever on a full queue.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, not lost in the thread
            put(exc)
        finally:
            if hasattr(source, "close"):
                source.close()  # a generator's files close now, not when it is collected

    worker = threading.Thread(target=produce, daemon=True, name="albert-onnx-prefetch")
    worker.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def prepared(groups: Iterable[T], prepare: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """Each window of GROUPS with PREPARE(window) (tokenization), computed a window ahead."""
    return ahead((window, prepare(window)) for window in groups)
