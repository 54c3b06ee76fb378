"""Distil all-MiniLM-L6-v2's sentence vectors into a small ALBERT with the albert-base-v2 vocab.

    python models/training/corpus.py .work/distill/texts.txt
    python models/training/teacher.py .work/teacher
    python models/training/teacher.py .work/teacher --targets .work/distill/texts.txt \
        .work/distill/teacher.npy
    python models/training/distill.py .work/distill/texts.txt .work/distill/teacher.npy \
        .work/student
    albert-onnx export .work/student models/albert-minilm-small --quantize

The student is warm-started from the teacher so that a short CPU run gets far:
- word pieces: each ALBERT piece is re-tokenized with the teacher's WordPiece vocabulary and
  gets the mean of those teacher embeddings; the table is then factorized onto the
  E = 128 directions that keep most of its energy (V x 128 table, 128 -> H projection);
- the E -> H projection is fitted by least squares to reproduce the teacher's embedding
  LayerNorm output from the student's (LayerNorm sits before the projection in ALBERT);
- the shared layer starts as one of the teacher's six layers with its two residual branches
  scaled down (repeating a full teacher layer six times wrecks the signal, while a damped
  one starts near the teacher's bag of word vectors); the layer and the damping that score
  best on STS-B dev are kept.
The loss is 1 - cosine to the teacher's normalized vector, plus the squared error between the
batch's student and teacher cosine-similarity matrices (what STS actually measures), plus the
same error over the near pairs alone (a text and its variants, see augment.py), which would
otherwise be a few hundred of the batch's 16,000 pairs.
--resume continues from a trained student instead of warm-starting a new one.
STS-B dev is checked every --eval-every steps and the best state is saved; the test split is
only touched by evaluate.py, through the ONNX runtime.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sts import cosine_spearman, read_pairs
from teacher import load_teacher, teacher_dir
from tokenizers import Tokenizer
from torch import nn

from albert_onnx.export.graph import pool
from albert_onnx.export.tokenizer_files import write_tokenizer
from albert_onnx.runtime.pipeline.bucketer import pad_batch
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer

REPO = Path(__file__).resolve().parents[2]
ALBERT_TOKENIZER = REPO / "tests" / "data" / "albert-base-v2"
STUDENT = dict(
    vocab_size=30000,
    embedding_size=128,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=6,
    intermediate_size=1536,
    hidden_act="gelu",  # the teacher's, so its layer weights are a valid start
    max_position_embeddings=512,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TRAIN_LENGTH = 128
DAMPINGS = (1.0, 0.3, 0.1)
ST_FILES = {
    "modules.json": [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ],
    "1_Pooling/config.json": {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True},
    "sentence_bert_config.json": {"max_seq_length": TRAIN_LENGTH * 2, "do_lower_case": False},
}


def mapped_word_table(teacher_words: np.ndarray) -> np.ndarray:
    """Teacher embeddings carried onto the ALBERT vocabulary, piece by piece."""
    albert = json.loads((ALBERT_TOKENIZER / "tokenizer.json").read_text())["model"]["vocab"]
    wordpiece = Tokenizer.from_file(str(teacher_dir() / "tokenizer.json"))
    wordpiece.no_padding()  # the shipped file pads everything to 128
    vocab = wordpiece.get_vocab()
    specials = {
        "<pad>": "[PAD]",
        "<unk>": "[UNK]",
        "[CLS]": "[CLS]",
        "[SEP]": "[SEP]",
        "[MASK]": "[MASK]",
    }
    table = np.empty((len(albert), teacher_words.shape[1]), dtype=np.float32)
    fallback = teacher_words.mean(0)
    for index, (piece, _) in enumerate(albert):
        if piece in specials:
            ids = [vocab[specials[piece]]]
        else:
            word = piece.lstrip("▁")
            continuation = not piece.startswith("▁") and f"##{word}" in vocab
            ids = (
                [vocab[f"##{word}"]]
                if continuation
                else wordpiece.encode(word, add_special_tokens=False).ids
            )
        table[index] = teacher_words[ids].mean(0) if ids else fallback
    return table


def layer_norm(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def warm_start(
    student: nn.Module, teacher: nn.Module, layer: int, damping: float, seed: int
) -> None:
    """Copy what can be carried over from the teacher (see the module docstring)."""
    t_emb = teacher.embeddings
    words = mapped_word_table(t_emb.word_embeddings.weight.detach().numpy())
    positions = t_emb.position_embeddings.weight.detach().numpy()
    types = t_emb.token_type_embeddings.weight.detach().numpy()
    _, _, vt = np.linalg.svd(np.concatenate([words, positions]), full_matrices=False)
    basis = vt[: STUDENT["embedding_size"]].T  # H x E

    rng = np.random.default_rng(seed)
    sample = (
        words[rng.integers(5, len(words), 50_000)]
        + positions[rng.integers(0, 128, 50_000)]
        + types[0]
    )
    gamma, beta = (t_emb.LayerNorm.weight.detach().numpy(), t_emb.LayerNorm.bias.detach().numpy())
    target = layer_norm(sample) * gamma + beta
    inputs = np.hstack([layer_norm(sample @ basis), np.ones((len(sample), 1))])
    solution, *_ = np.linalg.lstsq(inputs, target, rcond=None)

    s_emb, encoder = student.embeddings, student.encoder
    with torch.no_grad():
        s_emb.word_embeddings.weight.copy_(torch.from_numpy(words @ basis))
        s_emb.position_embeddings.weight.copy_(torch.from_numpy(positions @ basis))
        s_emb.token_type_embeddings.weight.copy_(torch.from_numpy(types @ basis))
        s_emb.LayerNorm.weight.fill_(1.0)
        s_emb.LayerNorm.bias.zero_()
        encoder.embedding_hidden_mapping_in.weight.copy_(torch.from_numpy(solution[:-1].T))
        encoder.embedding_hidden_mapping_in.bias.copy_(torch.from_numpy(solution[-1]))
    copy_layer(
        teacher.encoder.layer[layer], encoder.albert_layer_groups[0].albert_layers[0], damping
    )


def copy_layer(bert_layer: nn.Module, albert_layer: nn.Module, damping: float) -> None:
    pairs = {
        "attention.query": bert_layer.attention.self.query,
        "attention.key": bert_layer.attention.self.key,
        "attention.value": bert_layer.attention.self.value,
        "attention.dense": bert_layer.attention.output.dense,
        "attention.LayerNorm": bert_layer.attention.output.LayerNorm,
        "ffn": bert_layer.intermediate.dense,
        "ffn_output": bert_layer.output.dense,
        "full_layer_layer_norm": bert_layer.output.LayerNorm,
    }
    with torch.no_grad():
        for name, source in pairs.items():
            albert_layer.get_submodule(name).load_state_dict(source.state_dict())
        for branch_end in (albert_layer.attention.dense, albert_layer.ffn_output):
            branch_end.weight.mul_(damping)
            branch_end.bias.mul_(damping)


class Batches:
    """Length-sorted batches from shuffled pools, so padding stays small and order random.

    A group (a text and its variants: consecutive lines with one group number) always lands
    in one batch, so the loss sees its near pairs.
    """

    def __init__(self, lengths: np.ndarray, groups: np.ndarray, batch_size: int, seed: int):
        bounds = [*np.flatnonzero(np.diff(groups)) + 1, len(groups)]
        self.groups = [list(range(a, b)) for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]
        self.longest = [max(lengths[i] for i in group) for group in self.groups]
        self.batch_size = batch_size
        self.rng = random.Random(seed)

    def __iter__(self):
        while True:
            order = list(range(len(self.groups)))
            self.rng.shuffle(order)
            pool_size = self.batch_size * 64
            for start in range(0, len(order), pool_size):
                batches, batch = [], []
                for g in sorted(order[start : start + pool_size], key=self.longest.__getitem__):
                    batch += self.groups[g]
                    if len(batch) >= self.batch_size:
                        batches.append(batch)
                        batch = []
                batches += [batch] if batch else []
                self.rng.shuffle(batches)
                yield from batches


def pad(encoded: list, indices: list[int]) -> dict[str, torch.Tensor]:
    """The runtime's own padding, to the batch's longest text, as torch tensors."""
    rows = [encoded[i] for i in indices]
    inputs = pad_batch(rows, max(len(row) for row in rows))
    return {name: torch.from_numpy(array) for name, array in inputs.items()}


def sentence_vectors(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean pooling exactly as the exported graph computes it, then L2 (as the manifest)."""
    hidden = model(**inputs).last_hidden_state
    return nn.functional.normalize(pool(hidden, inputs["attention_mask"], "mean"), dim=-1)


@torch.no_grad()
def vectors_of(model: nn.Module, encoded: list, rows: Sequence[int]) -> torch.Tensor:
    """Sentence vectors of ROWS, in their order, run in length-sorted chunks of 128."""
    order = sorted(range(len(rows)), key=lambda k: len(encoded[rows[k]]))
    out = torch.empty(len(rows), STUDENT["hidden_size"])
    for start in range(0, len(order), 128):
        chunk = order[start : start + 128]
        out[chunk] = sentence_vectors(model, pad(encoded, [rows[k] for k in chunk]))
    return out


def sts_dev(model: nn.Module, tokenizer: TextTokenizer, pairs) -> float:
    model.eval()
    firsts, seconds, gold = pairs
    vectors = [
        vectors_of(model, tokenizer.encode(texts), range(len(texts))).numpy()
        for texts in (firsts, seconds)
    ]
    model.train()
    return cosine_spearman(*vectors, gold)


def build_student(teacher: nn.Module, tokenizer: TextTokenizer, dev, layer: str, seed: int):
    """A warm-started student; with layer 'auto', the teacher layer that starts best on dev."""
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(**STUDENT)
    dev_head = tuple(part[:500] for part in dev)  # enough to rank the starts, 6x cheaper
    layers = range(teacher.config.num_hidden_layers) if layer == "auto" else [int(layer)]
    best, best_score = None, -math.inf
    for candidate, damping in itertools.product(layers, DAMPINGS):
        torch.manual_seed(seed)
        student = AlbertModel(config, add_pooling_layer=False)
        warm_start(student, teacher, candidate, damping, seed)
        score = sts_dev(student, tokenizer, dev_head)
        print(
            f"warm start: teacher layer {candidate}, damping {damping}: STS-B dev {score:.4f}",
            flush=True,
        )
        if score > best_score:
            best, best_score = student, score
    return best


@torch.no_grad()
def rotate_into_student_basis(
    student: nn.Module, encoded: list, targets: torch.Tensor, seed: int, sample: int = 4096
) -> torch.Tensor:
    """Turn the teacher's vectors by the rotation that best fits the warm-started student's.

    The student's output coordinates have nothing to do with the teacher's, so matching the
    teacher's vectors directly first spends thousands of steps turning the whole output
    space (and wrecks the warm start meanwhile). A rotation (orthogonal Procrustes) leaves
    every cosine between teacher vectors, which is all STS measures, exactly as it was.
    """
    student.eval()
    rows = random.Random(seed).sample(range(len(encoded)), sample)
    mine = vectors_of(student, encoded, rows)
    u, _, vt = torch.linalg.svd(targets[rows].T @ mine)
    rotation = u @ vt
    before = (mine * targets[rows]).sum(1).mean()
    after = (mine * (targets[rows] @ rotation)).sum(1).mean()
    print(
        f"teacher vectors rotated: mean cosine to the student {before:.3f} -> {after:.3f}",
        flush=True,
    )
    return targets @ rotation


def save_checkpoint(model: nn.Module, output: Path) -> None:
    """An ALBERT sentence-transformers checkpoint that `albert-onnx export` takes as it is."""
    if output.exists():
        shutil.rmtree(output)
    model.save_pretrained(output)
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(ALBERT_TOKENIZER / name, output / name)
    for name, content in ST_FILES.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(json.dumps(content, indent=2) + "\n")
    (output / "2_Normalize").mkdir(exist_ok=True)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    work = args.output.parent / f"{args.output.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    write_tokenizer(ALBERT_TOKENIZER, 30000, 512, work / "tokenizer.json")
    tokenizer = TextTokenizer(work / "tokenizer.json", TRAIN_LENGTH)
    dev = read_pairs(args.sts / "sts-dev.csv")

    texts = args.texts.read_text(encoding="utf-8").splitlines()
    targets = torch.from_numpy(np.load(args.targets))
    groups_file = args.texts.with_suffix(".groups.npy")
    groups = np.load(groups_file) if groups_file.exists() else np.arange(len(texts))
    for name, rows in ((args.targets, targets), (groups_file, groups)):
        if len(rows) != len(texts):
            raise SystemExit(f"{name}: {len(rows)} rows for {len(texts)} texts")
    if args.limit:
        texts, targets, groups = texts[: args.limit], targets[: args.limit], groups[: args.limit]
    encoded = tokenizer.encode(texts)
    lengths = np.array([len(e) for e in encoded])
    print(f"{len(texts)} texts, {lengths.sum()} tokens, mean {lengths.mean():.1f}", flush=True)

    if args.resume:
        from transformers import AlbertModel

        student = AlbertModel.from_pretrained(args.resume, add_pooling_layer=False)
    else:
        student = build_student(load_teacher(), tokenizer, dev, args.init_layer, args.seed)
    targets = rotate_into_student_basis(student, encoded, targets, args.seed)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / (args.steps - warmup))),
    )
    best_score, log, started, seen_tokens = sts_dev(student, tokenizer, dev), [], time.time(), 0
    save_checkpoint(student, args.output)
    for step, batch in enumerate(Batches(lengths, groups, args.batch_size, args.seed), start=1):
        vectors = sentence_vectors(student, pad(encoded, batch))
        teacher = targets[batch]
        errors = (vectors @ vectors.T - teacher @ teacher.T).pow(2)
        group = torch.from_numpy(groups[batch])
        near = (group[:, None] == group[None, :]).fill_diagonal_(False)
        loss = (
            args.direct * (1 - (vectors * teacher).sum(1)).mean()
            + args.relational * errors.mean()
            + args.pairs * (errors[near].mean() if near.any() else 0.0)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        seen_tokens += int(lengths[batch].sum())
        if step == 20:
            print(f"20 steps in {time.time() - started:.0f} s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            score = sts_dev(student, tokenizer, dev)
            elapsed = time.time() - started
            log.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "sts_dev": round(score, 4),
                    "minutes": round(elapsed / 60, 1),
                    "tokens_per_s": round(seen_tokens / elapsed),
                }
            )
            print(json.dumps(log[-1]), flush=True)
            if score > best_score:
                best_score = score
                save_checkpoint(student, args.output)
        if step == args.steps:
            break
    (args.output / "training_log.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "best_sts_dev": best_score,
                "log": log,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"best STS-B dev {best_score:.4f} -> {args.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", type=Path)
    parser.add_argument("targets", type=Path, help="teacher vectors, one row per text line")
    parser.add_argument("output", type=Path)
    parser.add_argument("--sts", type=Path, default=Path("../shared/data/corpora/stsbenchmark"))
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--relational", type=float, default=1.0)
    parser.add_argument("--direct", type=float, default=1.0)
    parser.add_argument("--pairs", type=float, default=10.0, help="weight of the near pairs")
    parser.add_argument("--resume", type=Path, help="a trained student to continue from")
    parser.add_argument("--init-layer", default="auto", help="teacher layer to start from")
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N texts only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    train(parser.parse_args())
