"""Bucketer stage: sort a window of tokenized texts by length and cut padded batches.

Each batch holds as many texts as fit under a token budget, counting padding, and is padded
to a multiple of 8: at most max_length / 8 distinct lengths, and with the budget bounding
batch x length, onnxruntime's memory arena stays bounded, where one new shape per batch
makes it grow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from albert_onnx.runtime.pipeline.tokenizer import Encoded

PAD_MULTIPLE = 8
MAX_PADDING = 0.1  # a sorted batch pads a text by at most this share of its length


def bucket_length(n: int) -> int:
    """N rounded up to the padding multiple."""
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


@dataclass(frozen=True)
class Batch:
    rows: np.ndarray  # positions of the batch's texts in the window
    inputs: dict[str, np.ndarray]
    real_tokens: int

    @property
    def padded_tokens(self) -> int:
        return self.inputs["input_ids"].size

    def halves(self) -> tuple[Batch, Batch]:
        """The batch split in two, for a retry after running out of device memory."""
        middle = len(self.rows) // 2
        return tuple(  # type: ignore[return-value]
            Batch(
                rows=self.rows[part],
                inputs={name: array[part] for name, array in self.inputs.items()},
                real_tokens=int(self.inputs["attention_mask"][part].sum()),
            )
            for part in (slice(None, middle), slice(middle, None))
        )


def pad_batch(items: Sequence[Encoded], length: int) -> dict[str, np.ndarray]:
    """Model inputs for ITEMS, right-padded with zeros to LENGTH."""
    ids = np.zeros((len(items), length), dtype=np.int64)
    type_ids = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, item in enumerate(items):
        n = len(item)
        ids[row, :n] = item.ids
        type_ids[row, :n] = item.type_ids
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}


def make_batches(
    items: Sequence[Encoded],
    max_batch_tokens: int,
    sort: bool = True,
    max_padding: float = MAX_PADDING,
) -> list[Batch]:
    """ITEMS cut into padded batches by `group`: the model's inputs, ready to run."""
    lengths = np.fromiter((len(item) for item in items), dtype=np.int64, count=len(items))
    return [
        Batch(
            rows=rows,
            inputs=pad_batch([items[i] for i in rows], bucket_length(int(lengths[rows].max()))),
            real_tokens=int(lengths[rows].sum()),
        )
        for rows in group(lengths, max_batch_tokens, sort, max_padding)
    ]


def group(
    lengths: np.ndarray,
    max_batch_tokens: int,
    sort: bool = True,
    max_padding: float = MAX_PADDING,
) -> list[np.ndarray]:
    """The rows of each batch of texts with LENGTHS, under MAX_BATCH_TOKENS padded tokens
    (one text at least).

    With SORT (the default) texts are taken longest first and a batch only admits a text
    that it pads by at most MAX_PADDING of the batch length (or one padding multiple):
    without that bound a large budget lets one batch span 512 down to 100 tokens. Without
    SORT batches follow arrival order, padded to their longest text, as naive batching does.
    """
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    groups, start = [], 0
    while start < len(order):
        end, longest = start + 1, int(lengths[order[start]])
        while end < len(order):
            length = int(lengths[order[end]])
            padded = bucket_length(max(longest, length))
            if (end - start + 1) * padded > max_batch_tokens:
                break
            if sort and padded - length > max(PAD_MULTIPLE, max_padding * padded):
                break
            longest, end = max(longest, length), end + 1
        groups.append(order[start:end])
        start = end
    return groups
