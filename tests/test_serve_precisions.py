"""Precisions through the server and the model's calibration: `albert-onnx calibrate`
records int8/uint8 ranges in a model directory; a live server answers any precision per
request (OpenAI's `embedding_type` extension, Cohere's `/v2/embed` with several
`embedding_types`) and its `--dtype` by default; the API and the corpus job quantize with
the same ranges. Servers stop by SIGTERM; every call has a timeout."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from albert_onnx import Embedder
from albert_onnx.runtime.job import embed_corpus
from albert_onnx.runtime.pipeline.quantize import Ranges, quantize, unpack

from conftest import real_texts, run_cli, write_jsonl
from live_server import TIMEOUT, Running, serving

TEXTS = real_texts()[:24]


@pytest.fixture(scope="module")
def calibrated(english_export, tmp_path_factory) -> Path:
    """A copy of the small model with its fp32 graph calibrated on 100 real texts."""
    model = tmp_path_factory.mktemp("calibrated") / "albert-small-onnx"
    shutil.copytree(english_export, model)
    corpus = write_jsonl(model.parent / "sample.jsonl", real_texts()[:100])
    done = run_cli("calibrate", model, corpus, "--precision", "fp32", "--provider", "cpu")
    assert done.returncode == 0, done.stderr
    assert "fp32 graph's vectors" in done.stdout and "first 100 records" in done.stdout
    return model


@pytest.fixture(scope="module")
def model(calibrated) -> Embedder:
    return Embedder(calibrated, provider="cpu", precision="fp32")


@pytest.fixture(scope="module")
def server(calibrated) -> Iterator[Running]:
    with serving(calibrated, "--precision", "fp32", "--provider", "cpu") as running:
        yield running


def close(found: np.ndarray, expected: np.ndarray, dtype: str, dimension: int) -> bool:
    """The same codes, but for a value on a step's edge or at 0 (a server's batches and
    the API's round their floats apart)."""
    if found.shape != expected.shape:
        return False
    if dtype in ("binary", "ubinary"):
        bits = unpack(found, dtype, dimension) == unpack(expected, dtype, dimension)
        return bits.mean() > 0.999
    apart = np.abs(found.astype(int) - expected.astype(int))
    return apart.max() <= 1 and (apart == 0).mean() > 0.99


def test_calibrate_records_ranges_the_api_and_the_job_use(model, calibrated, tmp_path):
    recorded = json.loads((calibrated / "albert_onnx.json").read_text())["calibration"]["fp32"]
    ranges = Ranges.from_dict(recorded)
    sample = model.embed(real_texts()[:100])
    assert np.allclose(ranges.array, [sample.min(0), sample.max(0)], atol=1e-6)
    assert ranges.source.startswith("the first 100 records of ")
    floats = model.embed(TEXTS)
    assert np.array_equal(model.embed(TEXTS, precision="int8"), quantize(floats, "int8", ranges))
    corpus = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    embed_corpus(model, corpus, tmp_path / "v.npy", dtype="uint8")
    manifest = json.loads((tmp_path / "v.npy.manifest.json").read_text())
    assert manifest["ranges"]["source"] == f"the model's calibration, on {ranges.source}"
    assert manifest["ranges"]["low"] == recorded["low"]


def test_the_openai_client_asks_for_a_precision_per_request(server, model):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT)
    floats = model.embed(TEXTS)
    for dtype in ("int8", "uint8", "binary", "ubinary"):
        response = client.embeddings.create(
            model="albert-small-onnx", input=TEXTS, encoding_format="float",
            extra_body={"embedding_type": dtype},
        )  # fmt: skip
        expected = model.embed(TEXTS, precision=dtype)
        found = np.array([d.embedding for d in response.data], dtype=expected.dtype)
        assert close(found, expected, dtype, model.dimension), dtype
    packed = server.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64",
                                                 "embedding_type": "ubinary"})  # fmt: skip
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), np.uint8) for d in packed.json()["data"]
    ]
    bits = unpack(np.stack(rows), "ubinary", model.dimension)
    assert bits.shape == floats.shape and (bits == (floats > 0)).mean() > 0.999
    half = server.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64",
                                               "embedding_type": "float16"})  # fmt: skip
    row = np.frombuffer(base64.b64decode(half.json()["data"][0]["embedding"]), "<f2")
    assert np.abs(row.astype(np.float32) - floats[0]).max() < 2e-3


def test_cohere_embed_answers_several_types_at_once(server, model):
    response = server.post("/v2/embed", json={
        "model": "albert-small-onnx", "texts": TEXTS, "input_type": "search_document",
        "embedding_types": ["float", "int8", "binary"],
    })  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response_type"] == "embeddings_by_type" and body["texts"] == TEXTS
    assert sorted(body["embeddings"]) == ["binary", "float", "int8"]
    assert body["meta"]["billed_units"]["input_tokens"] > len(TEXTS)
    floats = np.array(body["embeddings"]["float"], dtype=np.float32)
    assert np.abs(floats - model.embed(TEXTS)).max() < 1e-5
    int8 = np.array(body["embeddings"]["int8"], dtype=np.int8)
    assert close(int8, model.embed(TEXTS, precision="int8"), "int8", model.dimension)
    binary = np.array(body["embeddings"]["binary"], dtype=np.int8)
    assert np.array_equal(binary, quantize(floats, "binary"))


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/embeddings", {"input": "x", "embedding_type": "int4"},
         r"'embedding_type' must be one of float, float32, float16, int8"),
        ("/v2/embed", {"texts": ["x"], "truncate": "START"}, r"'truncate' must be 'END' or 'NONE'"),
        ("/v2/embed", {"texts": ["x"], "images": ["data:image/png;base64,AA=="]},
         r"'images' is not supported: send 'texts'"),
        ("/v2/embed", {"texts": ["x"], "embedding_types": []}, r"must be a non-empty list"),
        ("/v2/embed", {"texts": ["x"], "input_type": "image"}, r"'input_type' must be one of"),
        ("/v2/embed", {"texts": ["x"], "output_dimension": 8},
         r"'output_dimension' 8 is not supported: this ALBERT model was not trained to be cut"),
    ],
)  # fmt: skip
def test_what_a_precision_request_gets_wrong_is_named(server, path, body, message):
    import re

    response = server.post(path, json=body)
    assert response.status_code == 400
    error = response.json()
    text = error["message"] if path == "/v2/embed" else error["error"]["message"]
    assert re.search(message, text), text


def test_the_servers_dtype_is_the_default_and_int8_needs_a_calibration(english_export, model):
    with serving(english_export, "--precision", "fp32", "--provider", "cpu",
                 "--dtype", "binary") as running:  # fmt: skip
        tei = running.post("/embed", json={"inputs": TEXTS[:3]})
        assert np.array_equal(np.array(tei.json(), dtype=np.int8),
                              model.embed(TEXTS[:3], precision="binary"))  # fmt: skip
        openai = running.post("/v1/embeddings", json={"input": TEXTS[:3]})
        assert np.array(openai.json()["data"][0]["embedding"]).shape == (model.dimension // 8,)
        refused = running.post("/v1/embeddings", json={"input": "x", "embedding_type": "int8"})
        assert refused.status_code == 400
        assert (
            "this server's model has none (its operator runs `albert-onnx calibrate`)"
            in (refused.json()["error"]["message"])
        )
        assert running.get("/info").json()["dtype"] == "binary"
    refused = run_cli("serve", "--model", english_export, "--dtype", "int8", "--port", "0",
                      "--provider", "cpu")  # fmt: skip
    assert refused.returncode == 1
    assert "--dtype int8 quantizes with the model's calibrated ranges" in refused.stderr


def test_int8_with_another_normalisation_than_the_ranges_is_refused(calibrated, model):
    normalize = model.pipeline.normalize  # what the ranges were measured on
    with serving(calibrated, "--precision", "fp32", "--provider", "cpu",
                 "--dtype", "int8") as running:  # fmt: skip
        refused = running.post("/embed", json={"inputs": ["x"], "normalize": not normalize})
        assert refused.status_code == 400
        assert f"'normalize' must be {str(normalize).lower()} for them" in refused.json()["error"]
        answered = running.post("/embed", json={"inputs": TEXTS, "normalize": normalize})
        expected = model.embed(TEXTS, precision="int8")
        found = np.array(answered.json(), dtype=np.int8)
        assert close(found, expected, "int8", model.dimension)
