"""The `albert-onnx` command as a user runs it: a subprocess, offline, errors in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli


def test_export_then_info(english_checkpoint, tmp_path):
    result = run_cli("export", english_checkpoint, "--output", tmp_path / "m", "--quantize")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "int8" in result.stdout
    info = run_cli("info", tmp_path / "m")
    assert info.returncode == 0, info.stderr
    assert "working providers: CPUExecutionProvider" in info.stdout
    assert "MISMATCH" not in info.stdout


def test_info_flags_a_changed_file(english_export, tmp_path):
    copy = shutil.copytree(english_export, tmp_path / "m")
    with open(copy / "model.int8.onnx", "ab") as f:
        f.write(b"\0")
    assert "MISMATCH" in run_cli("info", copy).stdout


def test_hub_id_offline_fails_with_one_clear_sentence(tmp_path):
    result = run_cli("export", "albert-base-v2", "--output", tmp_path / "m")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "could not fetch 'albert-base-v2'" in result.stderr
    assert "pass a local checkpoint directory" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("config", "model_type is 'bert', not 'albert'"),
        ("weights", "no weights"),
        ("tokenizer", "no tokenizer"),
    ],
)
def test_bad_checkpoint_names_what_is_wrong(english_checkpoint, tmp_path, breakage, message):
    bad = shutil.copytree(english_checkpoint, tmp_path / "bad")
    if breakage == "config":
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    elif breakage == "weights":
        (bad / "model.safetensors").unlink()
    else:
        (bad / "spiece.model").unlink()
        (bad / "tokenizer.json").unlink()
    result = run_cli("export", bad, "--output", tmp_path / "m")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_word_vectors_command(english_export):
    result = run_cli("word-vectors", "parameters", "albert", "--model", english_export)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["parameters", "albert"]
    assert [r[1] for r in rows] == ["▁parameters", "▁albert"]
    assert all(len(r[2].split()) == 32 for r in rows)


def test_bench_times_every_cpu_variant_in_both_batchings(english_export, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"body": f"text number {i} " * (i % 9 + 1)}) for i in range(40)) + "\n"
    )
    result = run_cli(
        "bench",
        "--model",
        english_export,
        "--provider",
        "cpu",
        "--corpus",
        corpus,
        "--text-field",
        "body",
        "--texts",
        "24",
    )
    assert result.returncode == 0, result.stderr
    assert "24 texts" in result.stdout
    rows = [
        [cell.strip() for cell in line.split("│")[1:4]]
        for line in result.stdout.splitlines()
        if "│ cpu" in line
    ]
    assert rows == [
        ["cpu", "int8", "sorted"],
        ["cpu", "int8", "arrival"],
        ["cpu", "fp32", "sorted"],
        ["cpu", "fp32", "arrival"],
    ]


def test_bench_refuses_a_corpus_with_a_bad_line(english_export, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": 3}\n')
    result = run_cli("bench", "--model", english_export, "--corpus", corpus)
    assert result.returncode == 1
    assert f"{corpus}:2: field 'text' is int, not a string" in result.stderr


def test_export_without_fp32_ships_only_the_derived_variants(english_checkpoint, tmp_path):
    result = run_cli("export", english_checkpoint, "-o", tmp_path / "m", "--quantize", "--no-fp32")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "m" / "albert_onnx.json").read_text())
    assert set(manifest["variants"]) == {"int8"}
    assert not (tmp_path / "m" / "model.onnx").exists()
    info = run_cli("info", tmp_path / "m")
    assert info.returncode == 0 and "MISMATCH" not in info.stdout, info.stderr
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "still embeds"}\n')
    embed = run_cli(
        "embed", corpus, "--model", tmp_path / "m", "-o", tmp_path / "v.npy", "--provider", "cpu"
    )
    assert embed.returncode == 0 and "int8 on cpu" in embed.stderr, embed.stderr


def test_export_refuses_to_leave_nothing(english_checkpoint, tmp_path):
    result = run_cli("export", english_checkpoint, "-o", tmp_path / "m", "--no-fp32")
    assert result.returncode == 1
    assert "leaving out fp32 needs --quantize or --fp16" in result.stderr
    assert not (tmp_path / "m").exists()
