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
