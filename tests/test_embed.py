"""`embed` and `Embedder`: the vectors PyTorch gives, in input order, whatever the batching."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AlbertModel

from albert_onnx import Embedder
from albert_onnx.errors import ManifestError
from albert_onnx.export.graph import pool
from albert_onnx.runtime.pipeline.bucketer import make_batches
from albert_onnx.runtime.pipeline.tokenizer import TextTokenizer

from conftest import real_texts, run_cli, write_jsonl


def pytorch_vectors(checkpoint, model_dir, texts: list[str], pooling: str = "mean") -> np.ndarray:
    """AlbertModel + the same pooling, one text at a time (no padding at all)."""
    model = AlbertModel.from_pretrained(checkpoint).eval()
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", 512)
    rows = []
    with torch.no_grad():
        for encoded in tokenizer.encode(texts):
            ids = torch.from_numpy(encoded.ids.astype(np.int64))[None]
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            rows.append(pool(hidden, torch.ones_like(ids), pooling)[0].numpy())
    return np.stack(rows)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return real_texts()


@pytest.fixture(scope="module")
def reference(english_checkpoint, english_export, texts) -> np.ndarray:
    return pytorch_vectors(english_checkpoint, english_export, texts)


@pytest.mark.parametrize(("precision", "min_cosine"), [("fp32", 0.9999), ("int8", 0.99)])
def test_embed_command_matches_pytorch_in_input_order_with_ids(
    precision, min_cosine, english_export, texts, reference, tmp_path
):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts)
    result = run_cli(
        "embed",
        corpus,
        "--model",
        english_export,
        "--output",
        tmp_path / "v.npz",
        "--id-field",
        "doc_id",
        "--precision",
        precision,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(texts):,} docs" in result.stdout
    saved = np.load(tmp_path / "v.npz")
    assert saved["ids"].tolist() == [f"doc{i}" for i in range(len(texts))]
    assert saved["embeddings"].shape == (len(texts), 64)
    assert cosine_rows(saved["embeddings"], reference).min() >= min_cosine


def test_vectors_do_not_depend_on_bucketing_or_budget(english_export, texts):
    rng = np.random.default_rng(0)
    shuffled = [texts[i] for i in rng.permutation(len(texts))]
    runs = [
        Embedder(english_export, provider="cpu", precision="fp32", max_batch_tokens=budget).embed(
            shuffled
        )
        for budget in (64, 1000, 100_000)
    ]
    unsorted = Embedder(english_export, provider="cpu", precision="fp32")
    tokenized = unsorted.pipeline.tokenize(shuffled)
    runs.append(unsorted.pipeline.pooled(tokenized, bucketing=False)[0])
    one_by_one = np.concatenate([unsorted.embed([t]) for t in shuffled[:20]])
    for run in runs[1:]:
        assert np.abs(run - runs[0]).max() < 1e-5
    assert np.abs(one_by_one - runs[0][:20]).max() < 1e-5


def test_bucketer_respects_the_budget_and_multiple_of_eight(english_export, texts):
    encoded = TextTokenizer(english_export / "tokenizer.json", 512).encode(texts)
    batches = make_batches(encoded, max_batch_tokens=2048)
    assert sorted(int(i) for b in batches for i in b.rows) == list(range(len(texts)))
    for batch in batches:
        rows, length = batch.inputs["input_ids"].shape
        assert length % 8 == 0 and (rows * length <= 2048 or rows == 1)
        lengths = [len(encoded[i]) for i in batch.rows]
        assert length - 8 < max(lengths) <= length
        assert length - min(lengths) <= max(8, 0.1 * length)  # no text padded much
    real = sum(b.real_tokens for b in batches)
    sorted_pad = sum(b.padded_tokens for b in batches)
    arrival_pad = sum(b.padded_tokens for b in make_batches(encoded, 2048, sort=False))
    assert sorted_pad / real - 1 < 0.2 < arrival_pad / real - 1
    huge_budget = make_batches(encoded, max_batch_tokens=1_000_000)
    assert sum(b.padded_tokens for b in huge_budget) / real - 1 < 0.2


def test_pooling_modes_and_normalisation(english_checkpoint, english_export, texts):
    sample = texts[:12]
    for mode in ("cls", "max"):
        vectors = Embedder(english_export, provider="cpu", precision="fp32", pooling=mode).embed(
            sample
        )
        expected = pytorch_vectors(english_checkpoint, english_export, sample, mode)
        assert cosine_rows(vectors, expected).min() >= 0.9999
    normalized = Embedder(english_export, provider="cpu", normalize=True).embed(sample)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    tokens = Embedder(english_export, provider="cpu", pooling="none").embed(sample[:3])
    assert [t.shape[1] for t in tokens] == [64] * 3 and len({t.shape[0] for t in tokens}) > 1


def test_sentence_transformers_style_encode(english_export):
    embedder = Embedder(english_export, provider="cpu")
    one = embedder.encode("a single sentence", normalize_embeddings=True)
    many = embedder.encode(["a single sentence", "and another"], batch_size=2)
    assert one.shape == (64,) and many.shape == (2, 64)
    assert np.isclose(np.linalg.norm(one), 1.0, atol=1e-5)


def test_long_texts_chunk_mode_averages_overlapping_windows(english_export):
    long_text = " ".join(real_texts()[::2][:12])  # well past 512 tokens
    truncating = Embedder(english_export, provider="cpu", precision="fp32")
    chunking = Embedder(english_export, provider="cpu", precision="fp32", long_texts="chunk")
    windows = chunking.pipeline.tokenize([long_text])[0]
    assert len(windows) > 1 and all(len(w) <= 512 for w in windows)
    per_window, _ = chunking.pipeline.pooled([[w] for w in windows])
    weights = np.array([len(w) for w in windows], dtype=np.float32)
    expected = (per_window * weights[:, None]).sum(0) / weights.sum()
    chunked, counts = chunking.pipeline.pooled([windows])
    assert np.allclose(chunked[0], expected, atol=1e-5) and counts.truncated == 0
    _, truncated_counts = truncating.pipeline.pooled(truncating.pipeline.tokenize([long_text]))
    assert truncated_counts.truncated == 1
    short = ["short text", "another one"]
    assert np.allclose(chunking.embed(short), truncating.embed(short), atol=1e-6)


class TestManifestIsCheckedFirst:
    @pytest.fixture
    def copy(self, english_export, tmp_path):
        import shutil

        return shutil.copytree(english_export, tmp_path / "m")

    def test_unknown_format_version(self, copy):
        manifest = json.loads((copy / "albert_onnx.json").read_text())
        (copy / "albert_onnx.json").write_text(json.dumps({**manifest, "format_version": 99}))
        with pytest.raises(ManifestError, match="format_version 99 is not supported"):
            Embedder(copy, provider="cpu")

    def test_missing_variant(self, copy):
        manifest = json.loads((copy / "albert_onnx.json").read_text())
        del manifest["variants"]["int8"]
        (copy / "albert_onnx.json").write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match="no int8 variant"):
            Embedder(copy, provider="cpu", precision="int8")
        assert Embedder(copy, provider="cpu").precision == "fp32"  # auto falls back

    def test_changed_file(self, copy, tmp_path):
        with open(copy / "model.int8.onnx", "r+b") as f:
            f.seek(1000)
            f.write(b"\xff\xff")
        corpus = write_jsonl(tmp_path / "c.jsonl", ["text"])
        result = run_cli("embed", corpus, "--model", copy, "--output", tmp_path / "v.npy")
        assert result.returncode == 1
        assert "model.int8.onnx: sha256" in result.stderr and "does not match" in result.stderr
        assert not (tmp_path / "v.npy").exists()


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    from albert_onnx.runtime.model import model_dir

    monkeypatch.delenv(model_dir.ENV_MODEL, raising=False)
    monkeypatch.setattr(model_dir, "default_model_dir", lambda: tmp_path / "missing")
    with pytest.raises(ManifestError, match=r"default model is not installed.*--model DIR"):
        Embedder()


def test_default_model_is_resolvable(english_export, tmp_path, monkeypatch):
    from albert_onnx.runtime.model import model_dir

    monkeypatch.delenv(model_dir.ENV_MODEL, raising=False)
    default = model_dir.default_model_dir()
    assert default.parent.name == "models" and default.name == "albert-minilm-small"
    monkeypatch.setenv(model_dir.ENV_MODEL, str(english_export))
    assert Embedder().model_dir == english_export
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello world"])
    result = run_cli(
        "embed",
        corpus,
        "--output",
        tmp_path / "v.npy",
        **{model_dir.ENV_MODEL: str(english_export)},
    )
    assert result.returncode == 0, result.stderr


def test_runtime_is_torch_free(english_export):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'onnx', 'albert_onnx.export'):
            raise ImportError('blocked: ' + name)
        if name.startswith('albert_onnx.export'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from albert_onnx import Embedder
vectors = Embedder({str(english_export)!r}).embed(["torch-free", "embedding"])
assert vectors.shape == (2, 64), vectors.shape
assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
