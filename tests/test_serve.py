"""`albert-onnx serve` as users start it: a live server process on 127.0.0.1 (a free port),
called with the real openai and huggingface_hub clients and with plain HTTP. Every server
here is stopped by SIGTERM at the end of its tests, and every client call has a timeout."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from openai import OpenAI

from albert_onnx import Embedder
from albert_onnx.runtime.pipeline.pooling import l2_normalize

from conftest import real_texts, run_cli
from live_server import TIMEOUT, Running, serving


@pytest.fixture(scope="module")
def fp32_server(english_export) -> Iterator[Running]:
    with serving(english_export, "--precision", "fp32", "--provider", "cpu", "--no-truncate",
                 "--max-inputs-per-request", "64",
                 "--max-body-bytes", "200000") as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def reference(english_export) -> Embedder:
    return Embedder(english_export, provider="cpu", precision="fp32")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- the openai client gets Embedder's vectors ---------------------------------------------


@pytest.mark.parametrize("encoding", ["base64 (the client's default)", "float"])
def test_the_openai_client_gets_the_embedders_vectors_in_order(fp32_server, reference, encoding):
    client = OpenAI(base_url=fp32_server.url + "/v1", api_key="unused", timeout=TIMEOUT)
    texts = real_texts()[:40]
    options = {"encoding_format": "float"} if encoding == "float" else {}
    response = client.embeddings.create(model="albert-small-onnx", input=texts, **options)
    assert [d.index for d in response.data] == list(range(40))
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert cosines(vectors, reference.embed(texts)).min() >= 0.9999
    tokens = sum(len(doc[0]) for doc in reference.pipeline.tokenize(texts))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_int8_vectors_stay_close_whatever_their_batch(english_export):
    texts = real_texts()[:40]
    alone = Embedder(english_export, provider="cpu", precision="int8")
    with serving(english_export, "--precision", "int8", "--provider", "cpu") as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT)
        response = client.embeddings.create(model="albert-small-onnx", input=texts)
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert cosines(vectors, alone.embed(texts)).min() >= 0.999


def test_a_single_string_and_the_tei_endpoint(fp32_server, reference):
    one = fp32_server.post(
        "/v1/embeddings", json={"input": "just one", "encoding_format": "base64"}
    )
    row = np.frombuffer(base64.b64decode(one.json()["data"][0]["embedding"]), "<f4")
    assert np.abs(row - reference.embed(["just one"])[0]).max() < 1e-5
    tei = fp32_server.post("/embed", json={"inputs": ["a", "b c"], "normalize": False})
    assert tei.status_code == 200
    expected = Embedder(reference.model_dir, provider="cpu", precision="fp32", normalize=False)
    assert np.abs(np.array(tei.json()) - expected.embed(["a", "b c"])).max() < 1e-5


# -- many clients at once: every vector belongs to its own input ----------------------------


def test_64_concurrent_clients_get_their_own_vectors(fp32_server, reference):
    texts = real_texts()
    expected = dict(zip(texts, reference.embed(texts), strict=True))
    rng = np.random.default_rng(0)
    requests = [
        [texts[i] for i in rng.choice(len(texts), size=int(rng.integers(1, 17)), replace=False)]
        for _ in range(256)
    ]

    def call(inputs: list[str]) -> tuple[int, list[str], np.ndarray]:
        response = fp32_server.post("/v1/embeddings", json={"input": inputs})
        vectors = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        return response.status_code, inputs, vectors

    with ThreadPoolExecutor(max_workers=64) as clients:
        results = list(clients.map(call, requests))
    assert all(status == 200 for status, _, _ in results)
    for _, inputs, vectors in results:
        assert np.abs(vectors - np.stack([expected[t] for t in inputs])).max() < 1e-5
    assert fp32_server.metric("albert_onnx_inputs_total") >= sum(map(len, requests))


# -- refusals: JSON naming the problem, and the server answers the next request -----------

BAD_REQUESTS = [
    ("/v1/embeddings", b"not json", 400, "not valid JSON"),
    ("/v1/embeddings", b'["a list"]', 400, "must be a JSON object"),
    ("/v1/embeddings", {"input": 5}, 400, "'input' must be a string or a list of strings"),
    ("/v1/embeddings", {"input": []}, 400, "'input' is an empty list"),
    ("/v1/embeddings", {"input": ["ok", 5]}, 400, r"input\[1\] is int, not a string"),
    ("/v1/embeddings", b'{"input": ["ok", "\\ud800"]}', 400, r"input\[1\] has a lone surrogate"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "holds token ids"),
    ("/v1/embeddings", {"input": "x", "dimensions": 8}, 400, "'dimensions' 8 is not supported"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "'encoding_format'"),
    ("/v1/embeddings", {"input": "x", "encoding_format": 0}, 400, "'encoding_format'"),
    ("/v1/embeddings", {"input": "x", "encoding_format": []}, 400, "'encoding_format'"),
    ("/v1/embeddings", {"input": "x", "encoding_format": ""}, 400, "'encoding_format'"),
    ("/v1/embeddings", {"input": "x", "model": "gpt"}, 404, "model 'gpt' is not served here"),
    ("/v1/embeddings", {"input": ["x"] * 65}, 413, "65 inputs; this server takes at most 64"),
    ("/v1/embeddings", {"input": "x" * 250_000}, 413, "the limit is 200,000"),
    ("/v1/embeddings", {"input": ["ok", "word " * 600]}, 422, r"input\[1\] has more than 512"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 400, "'normalize' must be true or false"),
    ("/embed", {"inputs": []}, 400, "'inputs' is an empty list"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_a_bad_request_gets_a_clear_error_and_harms_nothing(
    fp32_server, path, body, status, message
):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = fp32_server.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    text = error["message"] if path.startswith("/v1") else error
    assert re.search(message, text), text
    assert fp32_server.post(path, json={"input": "fine", "inputs": "fine"}).status_code == 200


def test_an_input_over_the_limit_is_refused_from_a_bounded_prefix(fp32_server):
    """truncate false: 190 kB of text (about 40,000 tokens) is not tokenized whole to say
    that it is over the limit, and the answer does not pretend to know by how much."""
    huge = "word " * 38_000
    response = fp32_server.post("/embed", json={"inputs": ["ok", huge], "truncate": False})
    assert response.status_code == 422
    assert response.json()["error"] == (
        "inputs[1] has more than 512 tokens, the model's limit; shorten it or allow truncation"
    )


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
@pytest.mark.parametrize("path", ["/v1/embeddings", "/embed", "/", "/invocations"])
def test_a_body_not_declared_json_is_refused_with_415(fp32_server, path, content_type):
    """What a web page can make a browser send cross-site without a preflight."""
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"input": "x", "inputs": "x"}).encode()
    response = fp32_server.post(path, content=body, headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert "application/json" in (error["message"] if path.startswith("/v1") else error)
    declared = {"content-type": "application/json; charset=utf-8"}
    assert fp32_server.post(path, content=body, headers=declared).status_code == 200


# -- text-embeddings-inference's clients switch without changes ---------------------------


def test_the_huggingface_hub_client_gets_the_embedders_vectors(fp32_server, reference, monkeypatch):
    """InferenceClient(base_url=...).feature_extraction posts to `/`, as the TEI
    integrations of LangChain and Haystack call it."""
    from huggingface_hub import InferenceClient, constants

    # the tests run with HF_HUB_OFFLINE=1, which stops the client calling even 127.0.0.1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    texts = real_texts()[:8]
    client = InferenceClient(base_url=fp32_server.url, timeout=TIMEOUT)
    vectors = client.feature_extraction(texts, normalize=False)
    expected = Embedder(reference.model_dir, provider="cpu", precision="fp32", normalize=False)
    assert vectors.shape == (8, 64)
    assert np.abs(vectors - expected.embed(texts)).max() < 1e-5
    single = client.feature_extraction(texts[0])  # normalize: TEI's default
    assert np.abs(np.linalg.norm(single) - 1) < 1e-5


def test_tei_routes_for_sagemaker_and_health_probes(fp32_server):
    sagemaker = fp32_server.post("/invocations", json={"inputs": ["a", "b c"]})
    assert sagemaker.status_code == 200
    assert sagemaker.json() == fp32_server.post("/embed", json={"inputs": ["a", "b c"]}).json()
    assert fp32_server.get("/").status_code == fp32_server.get("/ping").status_code == 200


# -- backpressure ------------------------------------------------------------------------------


def test_a_burst_past_the_queue_limit_gets_429_and_the_rest_is_answered(english_export, reference):
    text = " ".join(real_texts()[::2][:3])  # about 300 tokens
    with serving(english_export, "--precision", "fp32", "--provider", "cpu",
                 "--max-queue-tokens", "3000", "--max-wait-ms", "50") as server:  # fmt: skip
        with ThreadPoolExecutor(max_workers=48) as clients:
            responses = list(
                clients.map(lambda _: server.post("/embed", json={"inputs": [text] * 4}), range(48))
            )
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 429} and statuses.count(429) >= 10
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error_type"] == "Overloaded"
            else:
                expected = l2_normalize(reference.embed([text] * 4))  # /embed: TEI's default
                assert np.abs(np.array(r.json()) - expected).max() < 1e-5
        assert server.post("/embed", json={"inputs": "after the burst"}).status_code == 200
        assert server.metric("albert_onnx_queue_tokens") == 0


# -- shutdown, access, readiness, clients that leave ----------------------------------------


def test_the_api_key_is_required_where_set(english_export):
    with serving(english_export, "--provider", "cpu", "--api-key", "s3cret") as server:
        assert server.post("/embed", json={"inputs": "x"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert server.post("/embed", json={"inputs": "x"}, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert server.post("/embed", json={"inputs": "x"}, headers=right).status_code == 200
        assert server.get("/health").status_code == 200  # probes need no key
        assert server.get("/info").status_code == 401
        client = OpenAI(base_url=server.url + "/v1", api_key="s3cret", timeout=TIMEOUT)
        assert len(client.embeddings.create(model="albert-small-onnx", input="x").data) == 1


def test_ready_only_after_warm_up(english_export):
    """Warm-up runs a full batch at several lengths; a large budget makes it take seconds."""
    with serving(english_export, "--provider", "cpu", "--max-batch-tokens", "32768",
                 ready=False) as server:  # fmt: skip
        assert server.get("/health").status_code == 200
        assert server.get("/ready").status_code == 503
        early = server.post("/embed", json={"inputs": "too soon"})
        assert early.status_code == 503 and "warming up" in early.json()["error"]
        server.wait_ready()
        assert server.post("/embed", json={"inputs": "now"}).status_code == 200


def test_info_and_metrics(fp32_server):
    info = fp32_server.get("/info").json()  # text-embeddings-inference's fields, then ours
    assert info["model_id"] == "albert-small-onnx" and info["dimension"] == 64
    assert (info["model_dtype"], info["provider"], info["max_input_length"]) == ("fp32", "cpu", 512)
    assert info["max_client_batch_size"] == 64 and info["auto_truncate"] is False
    text = fp32_server.get("/metrics").text
    for name in ("albert_onnx_queue_inputs", "albert_onnx_queue_tokens",
                 "albert_onnx_batch_tokens_bucket", "albert_onnx_batch_padding_ratio_bucket",
                 "albert_onnx_request_seconds_bucket", "albert_onnx_queue_seconds_bucket",
                 "albert_onnx_inputs_total", "albert_onnx_tokens_total",
                 'albert_onnx_errors_total{kind="invalid_request"}'):  # fmt: skip
        assert name in text, name


def test_the_server_is_torch_free(english_export):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'onnx') or name.startswith(
            'albert_onnx.export'
        ):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from albert_onnx.serve.app import Service, create_app
from albert_onnx.serve.config import ServeConfig
from albert_onnx.serve import server
from albert_onnx.runtime.options import ModelOptions
service = Service(ServeConfig(model=ModelOptions({str(english_export)!r}, provider='cpu')))
create_app(service)
assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


# -- the edges a review found ------------------------------------------------------------

MORE_BAD_REQUESTS = [
    ("/v1/embeddings", {"input": "x", "model": 7}, 400, "'model' must be a string"),
    ("/embed", {"inputs": "x", "truncation_direction": "Left"}, 400, "only 'truncation_direction'"),
    ("/embed", {"inputs": "x", "prompt_name": "query"}, 400, "'prompt_name' is not supported"),
    ("/embed", {"inputs": "x", "dimensions": 32}, 400, "'dimensions' 32 is not supported"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), MORE_BAD_REQUESTS)
def test_what_the_server_cannot_honour_is_refused_not_ignored(
    fp32_server, path, body, status, message
):
    response = fp32_server.post(path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert re.search(message, error["message"] if path.startswith("/v1") else error)


def test_the_models_own_dimension_and_models_list_are_accepted(fp32_server):
    same = fp32_server.post("/v1/embeddings", json={"input": "x", "dimensions": 64})
    assert same.status_code == 200
    assert fp32_server.get("/v1/models").json()["data"][0]["id"] == "albert-small-onnx"


def test_a_key_no_client_could_send_is_refused_at_start(english_export):
    result = run_cli("serve", "--model", english_export, "--api-key", "clé-ü", "--port", "0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the API key must be printable ASCII without spaces (HTTP headers carry ASCII; "
        "clients could never send this one)"
    ]


def test_options_are_checked_where_the_api_receives_them():
    from albert_onnx.errors import OptionError
    from albert_onnx.serve.config import ServeConfig

    for bad, message in [
        ({"api_key": " "}, "the API key is empty"),
        ({"port": 70000}, "port must be 0 to 65535"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a number of at least 0"),
        ({"max_inputs_per_request": 0}, "max_inputs_per_request must be a whole number"),
        ({"api_key": "clé-ü"}, "printable ASCII"),
        ({"api_key": "two words"}, "printable ASCII"),
        ({"request_timeout": 0}, "request_timeout must be a number of seconds above 0"),
        ({"max_connections": 10**9}, "does not fit under this process's limit"),
    ]:
        with pytest.raises(OptionError, match=message):
            ServeConfig(**bad)
