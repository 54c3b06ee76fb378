"""Export: checkpoint -> model directory whose graphs match PyTorch and keep ALBERT's sharing."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AlbertModel

from albert_onnx.errors import ExportError
from albert_onnx.export import exporter
from albert_onnx.export.exporter import export_model
from albert_onnx.export.graph import pool
from albert_onnx.runtime.model.manifest import FORMAT_VERSION, VARIANT_FILES, load_manifest

from conftest import build_checkpoint, build_sentence_transformer, run_cli

BATCH_SIZES = (1, 3, 8)
LENGTHS = (5, 64, 300)


def torch_reference(checkpoint, inputs: dict[str, np.ndarray], pooling: str):
    model = AlbertModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        hidden = model(**tensors).last_hidden_state
    return hidden.numpy(), pool(hidden, tensors["attention_mask"], pooling).numpy()


def random_batch(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Real-shaped input: [CLS] ids [SEP] then padding, every row a different length."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row in range(batch):
        n = length if row == 0 else int(rng.integers(3, length + 1))
        ids[row, :n] = rng.integers(5, 30000, n)
        ids[row, 0], ids[row, n - 1] = 2, 3
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class TestModelDirectory:
    def test_holds_every_file_of_the_contract(self, english_export):
        names = {p.name for p in english_export.iterdir()}
        assert {
            "albert_onnx.json",
            "model.onnx",
            "model.int8.onnx",
            "model.fp16.onnx",
            "tokenizer.json",
            "word_embeddings.npy",
            "embedding_projection.npz",
        } <= names

    def test_manifest_records_source_architecture_and_variants(
        self, english_export, english_checkpoint
    ):
        manifest = load_manifest(english_export)
        assert manifest.format_version == FORMAT_VERSION
        assert manifest.source["path"] == str(english_checkpoint.resolve())
        assert len(manifest.source["sha256"]) == 64
        assert manifest.architecture["embedding_size"] == 32
        assert manifest.architecture["num_hidden_layers"] == 12
        assert manifest.tokenizer["kind"] == "sentencepiece"
        assert manifest.tokenizer["max_length"] == 512
        assert (manifest.pooling, manifest.normalize) == ("mean", False)
        assert set(manifest.variants) == {"fp32", "int8", "fp16"}
        assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest.tools)
        for name, variant in manifest.variants.items():
            assert variant.file == VARIANT_FILES[name]
            assert variant.bytes == (english_export / variant.file).stat().st_size
            assert variant.opset >= 17
            assert [i["shape"] for i in variant.inputs] == [["batch", "sequence"]] * 3
            assert [i["dtype"] for i in variant.inputs] == ["int64"] * 3
            assert [o["shape"] for o in variant.outputs] == [
                ["batch", "sequence", 64],
                ["batch", 64],
            ]
            assert [o["dtype"] for o in variant.outputs] == ["float32", "float32"]

    def test_parity_is_recorded_within_limits(self, english_export):
        variants = load_manifest(english_export).variants
        assert variants["fp32"].parity["max_abs_diff_last_hidden_state"] <= 1e-4
        for variant in variants.values():
            assert variant.parity["min_cosine_sentence_embedding"] >= 0.99
            assert max(variant.parity["probe_lengths"]) == 512  # truncated probe included
            assert min(variant.parity["probe_lengths"]) <= 5

    def test_fp16_graph_fuses_every_layer(self, english_export):
        fused = load_manifest(english_export).variants["fp16"].fused_operators
        assert fused["MultiHeadAttention"] == 12
        assert fused["SkipLayerNormalization"] == 24
        assert fused["FastGelu"] == 12
        ops = [n.op_type for n in onnx.load(english_export / "model.fp16.onnx").graph.node]
        assert "Softmax" not in ops  # no attention left unfused

    def test_fp16_graph_keeps_the_embedding_stage_and_projection_in_fp32(self, english_export):
        """Their rounding is amplified by an ill-conditioned E -> H projection (the shipped
        default model's fp16 graph fell to pooled cosine 0.15 without this)."""
        graph = onnx.load(english_export / "model.fp16.onnx").graph
        dtypes = {t.name: t.data_type for t in graph.initializer}
        weights = {n.name: dtypes[n.input[1]] for n in graph.node if n.op_type == "MatMul"}
        (embedding,) = [n for n in graph.node if n.op_type == "EmbedLayerNormalization"]
        weights["EmbedLayerNormalization"] = dtypes[embedding.input[2]]  # the word table
        FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
        projection = [k for k in weights if "embedding_hidden_mapping_in" in k]
        assert weights.pop("EmbedLayerNormalization") == FLOAT
        assert len(projection) == 1 and weights.pop(projection[0]) == FLOAT
        assert set(weights.values()) == {FLOAT16}  # every layer weight is fp16


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_every_variant_runs_any_batch_and_length_and_matches_pytorch(
    variant, english_export, english_checkpoint
):
    session = ort.InferenceSession(
        english_export / VARIANT_FILES[variant], providers=["CPUExecutionProvider"]
    )
    for batch in BATCH_SIZES:
        for length in LENGTHS:
            inputs = random_batch(batch, length, seed=batch * 1000 + length)
            hidden, pooled = session.run(None, inputs)
            ref_hidden, ref_pooled = torch_reference(english_checkpoint, inputs, "mean")
            assert hidden.shape == (batch, length, 64) and pooled.shape == (batch, 64)
            assert cosine_rows(pooled, ref_pooled).min() >= 0.99
            if variant == "fp32":
                valid = inputs["attention_mask"].astype(bool)
                assert np.abs(hidden - ref_hidden)[valid].max() <= 1e-4


class TestAlbertStructureSurvives:
    def test_shared_layer_and_factorized_embedding_are_stored_once(
        self, english_export, english_checkpoint
    ):
        model = AlbertModel.from_pretrained(english_checkpoint, add_pooling_layer=False)
        torch_bytes = sum(p.numel() * 4 for p in model.parameters())
        graph = onnx.load(english_export / "model.onnx").graph
        onnx_bytes = sum(
            int(np.prod(i.dims)) * 4
            for i in graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT
        )
        assert onnx_bytes <= 1.02 * torch_bytes  # twelve layers, one copy
        word_table = [i for i in graph.initializer if list(i.dims) == [30000, 32]]
        assert len(word_table) == 1  # V x E, not V x H

    def test_int8_quantizes_each_shared_weight_once(self, english_export):
        graph = onnx.load(english_export / "model.int8.onnx").graph
        float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        weight_matmuls = [
            n for n in graph.node if n.op_type == "MatMul" and float_weights.intersection(n.input)
        ]
        # none left in fp32 behind an Identity; only the E -> H projection, on purpose
        assert [n.name for n in weight_matmuls] == [
            "/albert/encoder/embedding_hidden_mapping_in/MatMul"
        ]

        def two_dimensional(data_type):
            return sorted(
                list(i.dims)
                for i in graph.initializer
                if i.data_type == data_type and len(i.dims) == 2
            )

        # shared layer: Q, K, V, attention out (H x H), FFN in, FFN out, each once, INT8
        assert two_dimensional(onnx.TensorProto.INT8) == sorted(
            [[64, 64]] * 4 + [[64, 128], [128, 64]]
        )
        # the embedding tables (word V x E, position, token type), as the quantizer stores
        # Gather data: UINT8
        assert two_dimensional(onnx.TensorProto.UINT8) == [[2, 32], [512, 32], [30000, 32]]

    def test_albert_base_shape_sizes(self, tmp_path):
        """The real albert-base-v2 shape: ~45 MB fp32, <= 13 MB INT8 (not 12 x 28 MB)."""
        checkpoint = build_checkpoint(
            tmp_path / "base",
            embedding_size=128,
            hidden_size=768,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="gelu_new",
        )
        manifest = export_model(str(checkpoint), tmp_path / "out", quantize=True)
        assert 43e6 <= manifest.variants["fp32"].bytes <= 47e6
        assert manifest.variants["int8"].bytes <= 13e6
        assert manifest.variants["int8"].parity["min_cosine_sentence_embedding"] >= 0.99


class TestCheckpointKinds:
    def test_chinese_albert_with_wordpiece_vocab(self, tmp_path):
        checkpoint = build_checkpoint(tmp_path / "zh", vocab="chinese")
        manifest = export_model(str(checkpoint), tmp_path / "out", quantize=True)
        assert manifest.tokenizer["kind"] == "wordpiece"
        assert manifest.tokenizer["vocab_size"] == 21128
        assert manifest.variants["fp32"].parity["max_abs_diff_last_hidden_state"] <= 1e-4

    def test_sentence_transformers_pooling_becomes_the_default(self, tmp_path):
        checkpoint = build_sentence_transformer(tmp_path / "st", pooling="cls", normalize=True)
        manifest = export_model(str(checkpoint), tmp_path / "out")
        assert (manifest.pooling, manifest.normalize) == ("cls", True)
        inputs = random_batch(4, 20, seed=7)
        session = ort.InferenceSession(tmp_path / "out" / "model.onnx")
        hidden, pooled = session.run(None, inputs)
        assert np.allclose(pooled, hidden[:, 0])

    @pytest.mark.parametrize("mode", ["mean", "cls", "max"])
    def test_pooling_inside_the_graph_matches_pytorch(self, mode, tmp_path, english_checkpoint):
        export_model(str(english_checkpoint), tmp_path / mode, pooling=mode)
        inputs = random_batch(5, 33, seed=3)
        _, pooled = ort.InferenceSession(tmp_path / mode / "model.onnx").run(None, inputs)
        _, ref = torch_reference(english_checkpoint, inputs, mode)
        assert np.abs(pooled - ref).max() <= 1e-4

    def test_spiece_only_checkpoint_gets_a_converted_fast_tokenizer(self, tmp_path):
        checkpoint = build_checkpoint(tmp_path / "sp", tokenizer_files=("spiece.model",))
        manifest = export_model(str(checkpoint), tmp_path / "out")
        assert manifest.tokenizer["kind"] == "sentencepiece"


class TestRefusals:
    def test_not_albert(self, tmp_path, english_checkpoint):
        bad = tmp_path / "bert"
        bad.mkdir()
        config = json.loads((english_checkpoint / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
        with pytest.raises(ExportError, match=r"model_type is 'bert', not 'albert'"):
            export_model(str(bad), tmp_path / "out")

    def test_missing_weights(self, tmp_path, english_checkpoint):
        bad = tmp_path / "noweights"
        shutil_copy_without(english_checkpoint, bad, "model.safetensors")
        with pytest.raises(ExportError, match="no weights"):
            export_model(str(bad), tmp_path / "out")

    def test_missing_tokenizer(self, tmp_path, english_checkpoint):
        bad = tmp_path / "notok"
        shutil_copy_without(english_checkpoint, bad, "spiece.model", "tokenizer.json")
        with pytest.raises(ExportError, match="no tokenizer"):
            export_model(str(bad), tmp_path / "out")

    @pytest.mark.parametrize(
        ("damage", "message"),
        [
            ("cut in half", r"model\.safetensors: not a readable safetensors file \(.*"),
            ("zero bytes", r"model\.safetensors: not a readable safetensors file \(.*"),
            ("a bogus header", r"model\.safetensors: not a readable safetensors file \(.*"),
            (
                "config sizes unlike the weights",
                r"config\.json: its sizes do not match the weights in model\.safetensors "
                r"\(\d+ tensors differ; .* is \(64,?.*\) in the weights, \(128,?.*\) by "
                r"the config\)",
            ),
        ],
    )
    def test_a_damaged_checkpoint_is_one_line_naming_the_file(
        self, tmp_path, english_checkpoint, damage, message
    ):
        checkpoint = shutil.copytree(english_checkpoint, tmp_path / "ckpt")
        weights = checkpoint / "model.safetensors"
        if damage == "cut in half":
            os.truncate(weights, weights.stat().st_size // 2)
        elif damage == "zero bytes":
            weights.write_bytes(b"")
        elif damage == "a bogus header":
            weights.write_bytes(b"\xff" * 8 + b"not safetensors" * 64)
        else:
            config = json.loads((checkpoint / "config.json").read_text())
            (checkpoint / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
        result = run_cli("export", checkpoint, "-o", tmp_path / "out")
        assert result.returncode == 1
        lines = [line for line in result.stderr.splitlines() if line != "tokenizer"]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert re.search(message, lines[0]), lines[0]
        assert not (tmp_path / "out").exists()

    def test_existing_output_needs_force(self, tmp_path, english_checkpoint):
        output = tmp_path / "out"
        output.mkdir()
        (output / "keep.txt").write_text("mine")
        with pytest.raises(ExportError, match="--force"):
            export_model(str(english_checkpoint), output)
        assert (output / "keep.txt").read_text() == "mine"

    def test_force_replaces_a_model_directory(self, tmp_path, english_checkpoint, english_export):
        output = shutil.copytree(english_export, tmp_path / "out")
        (output / "model.fp16.onnx").write_bytes(b"an older export")
        export_model(str(english_checkpoint), output, force=True)
        assert (output / "model.onnx").is_file() and not (output / "model.fp16.onnx").exists()

    @pytest.mark.parametrize(
        ("layout", "message"),
        [
            ("a user's directory", "not an albert-onnx model directory"),
            ("a model directory holding a user's file", "holds notes.txt, which an export"),
            ("a file", "is a file, not a model directory"),
        ],
    )
    def test_force_never_deletes_what_an_export_did_not_write(
        self, tmp_path, english_checkpoint, english_export, layout, message
    ):
        """`export CKPT -o userdir --force` deleted userdir's files: --force replaces only a
        model directory an export wrote, and only if it holds nothing else."""
        output = tmp_path / "userdir"
        if layout == "a file":
            output.write_text("precious")
        elif layout == "a user's directory":
            (output / "sub").mkdir(parents=True)
            (output / "important.txt").write_text("precious")
        else:
            shutil.copytree(english_export, output)
            (output / "notes.txt").write_text("precious")
        before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
        with pytest.raises(ExportError, match=message):
            export_model(str(english_checkpoint), output, force=True)
        assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before

    def test_parity_failure_fails_the_export_and_writes_nothing(
        self, tmp_path, english_checkpoint, monkeypatch
    ):
        monkeypatch.setattr(exporter, "FP32_MAX_ABS_DIFF", 0.0)
        monkeypatch.setattr(exporter, "FP32_OWN_ERROR_FACTOR", 0.0)
        with pytest.raises(ExportError, match="parity failed: fp32"):
            export_model(str(english_checkpoint), tmp_path / "out")
        assert list(tmp_path.iterdir()) == []


def shutil_copy_without(source, destination, *skip):
    destination.mkdir()
    for path in source.iterdir():
        if path.name not in skip:
            (destination / path.name).write_bytes(path.read_bytes())


class TestOutputPlacement:
    @pytest.mark.parametrize("where", ["the checkpoint", "inside it", "its parent"])
    def test_an_output_overlapping_the_checkpoint_is_refused(
        self, where, english_checkpoint, tmp_path
    ):
        parent = tmp_path / "parent"
        checkpoint = shutil.copytree(english_checkpoint, parent / "ckpt")
        output = {"the checkpoint": checkpoint, "inside it": checkpoint / "onnx"}.get(where, parent)
        before = sorted(p.name for p in checkpoint.iterdir())
        with pytest.raises(ExportError, match="overlaps the checkpoint being exported"):
            export_model(str(checkpoint), output, force=True)
        assert sorted(p.name for p in checkpoint.iterdir()) == before

    def test_the_exported_directory_gets_the_usual_umask_mode(self, english_export):
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(english_export.stat().st_mode) == 0o777 & ~umask

    def test_fp16_graph_pools_in_fp32(self, english_export):
        """Mean pooling sums up to 512 token vectors: in fp16 that overflows past 65,504."""
        model = onnx.shape_inference.infer_shapes(onnx.load(english_export / "model.fp16.onnx"))
        graph = model.graph
        types = {
            v.name: v.type.tensor_type.elem_type
            for v in [*graph.value_info, *graph.input, *graph.output]
        }
        sums = [n for n in graph.node if n.op_type == "ReduceSum" and "/" in n.name]
        assert sums, "the mean pooling's ReduceSum nodes are in the graph"
        assert {types[n.input[0]] for n in sums} == {onnx.TensorProto.FLOAT}
