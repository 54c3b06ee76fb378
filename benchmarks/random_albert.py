"""Build a random-weight ALBERT checkpoint with the real albert-base-v2 tokenizer.

No pretrained ALBERT weights can be downloaded where this project is developed, so speed
and pipeline checks use the real shapes with random weights (fixed seed):

    python benchmarks/random_albert.py OUT [--shape base|large|small]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "data" / "albert-base-v2"
SHAPES = {
    "base": dict(
        embedding_size=128,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),
    "large": dict(
        embedding_size=128,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
    "small": dict(
        embedding_size=128,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=1536,
    ),
}


def build(output: Path, shape: str = "base", seed: int = 0) -> Path:
    import torch
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(seed)
    config = AlbertConfig(vocab_size=30000, hidden_act="gelu_new", **SHAPES[shape])
    AlbertModel(config).save_pretrained(output)
    for name in (
        "spiece.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        shutil.copy(TOKENIZER / name, output)
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    args = parser.parse_args()
    print(build(args.output, args.shape))
