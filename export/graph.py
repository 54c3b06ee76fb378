"""PyTorch side of the export: ALBERT plus in-graph pooling, traced to one fp32 ONNX graph.

The TorchScript exporter (dynamo=False) is used on purpose: it keeps ALBERT's shared layer
and factorized embedding as single initializers, and with the eager attention path the
graph has the MatMul/Softmax pattern that onnxruntime's transformer optimizer fuses.
"""

from __future__ import annotations

import pickle
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

from albert_onnx.errors import ExportError
from albert_onnx.export.checkpoint import WEIGHT_FILES

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = ["last_hidden_state", "sentence_embedding"]
DYNAMIC_AXES = {
    **{name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, "last_hidden_state"]},
    "sentence_embedding": {0: "batch"},
}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token vectors into one vector per text, ignoring padding."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).amax(1)
    raise ValueError(f"unknown pooling mode {mode!r}")


class PooledAlbert(nn.Module):
    """AlbertModel whose graph also returns the pooled sentence embedding."""

    def __init__(self, albert: nn.Module, pooling: str) -> None:
        super().__init__()
        self.albert = albert
        self.pooling = pooling

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.albert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return hidden, pool(hidden, attention_mask, self.pooling)


def load_albert(model_dir: Path) -> nn.Module:
    """AlbertModel with eager attention (fusable), without the unused pooler head. A weights
    file that cannot be read, or a config.json whose sizes are not the weights', is one
    ExportError naming the file and what is wrong."""
    from safetensors import SafetensorError
    from transformers import AlbertModel
    from transformers.utils import logging

    weights = next((model_dir / n for n in WEIGHT_FILES if (model_dir / n).is_file()), model_dir)
    # "some weights not used" is expected for MLM checkpoints; quiet for this call only
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    load = partial(
        AlbertModel.from_pretrained, model_dir, attn_implementation="eager",
        add_pooling_layer=False,
    )  # fmt: skip
    try:
        model = load()
    except SafetensorError as exc:
        raise ExportError(f"{weights}: not a readable safetensors file ({_cause(exc)})") from exc
    except RuntimeError as exc:
        if "mismatched" not in str(exc) and "size mismatch" not in str(exc):
            raise ExportError(
                f"{weights}: the weights could not be loaded ({_cause(exc)})"
            ) from exc
        _, info = load(ignore_mismatched_sizes=True, output_loading_info=True)
        mismatched = sorted(info["mismatched_keys"], key=lambda m: m[0])
        key, found, expected = mismatched[0]
        raise ExportError(
            f"{model_dir / 'config.json'}: its sizes do not match the weights in {weights.name} "
            f"({len(mismatched)} tensors differ; {key} is {tuple(found)} in the weights, "
            f"{tuple(expected)} by the config)"
        ) from exc
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ExportError(f"{weights}: the weights could not be loaded ({_cause(exc)})") from exc
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    return model.eval()


def _cause(exc: BaseException, limit: int = 160) -> str:
    """The first line of EXC's message, cut to LIMIT characters: one line for the user."""
    line = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def export_onnx(model: PooledAlbert, destination: Path, opset: int) -> None:
    """Trace with a padded batch so the mask path is in the graph; axes stay dynamic."""
    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(
            model,
            (ids, mask, torch.zeros_like(ids)),
            str(destination),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
