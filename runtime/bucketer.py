"""Bucketer stage: group tokenized texts into padded batches under a token budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from albert_onnx.runtime.tokenizer import Encoded


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
