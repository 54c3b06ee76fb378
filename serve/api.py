"""The two wire protocols, HTTP-framework-free: request bodies parsed and checked into one
`EmbedCall`, vectors shaped into each protocol's response, and `ApiError`s into each
protocol's error body.

- OpenAI `POST /v1/embeddings`: `input` (a string or a list of strings), `model`,
  `encoding_format` (`float` or `base64`: float32 little-endian, which the openai client
  asks for by default), `dimensions` (refused: ALBERT is not Matryoshka-trained), `user`.
  Extension: `embedding_type` (float, float16, int8, uint8, binary, ubinary; default: the
  server's `--dtype`): packed bits and integers as JSON numbers, or with `base64` their bytes.
- text-embeddings-inference `POST /embed` (and `POST /`, `POST /invocations`, which TEI
  serves the same way): `inputs`, `normalize` (default true), `truncate` (default: the
  server's); the response is a bare list of vectors (of the server's `--dtype`).
- Cohere `POST /v2/embed`: `texts`, `model`, `input_type` (accepted: this model has no
  input types, so it changes nothing), `embedding_types` (several at once), `truncate`
  (`END`, or `NONE`: 422 for a text over the limit); the response holds each type's vectors.

int8 and uint8 vectors are quantized with the ranges the model directory records
(`albert-onnx calibrate`), which were measured on the model's own vectors: a request for
them with another normalisation than the model's is refused.

Both take `Content-Type: application/json` only: any other type is what a web page can make
a browser send cross-site without a CORS preflight, so it is refused (415).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from albert_onnx.errors import AlbertOnnxError, InputError
from albert_onnx.runtime.options import Dtype
from albert_onnx.runtime.pipeline.quantize import CALIBRATED, Ranges, quantize
from albert_onnx.runtime.pipeline.tokenizer import check_texts

# kind -> (HTTP status, OpenAI error type, TEI error type)
KINDS = {
    "invalid_request": (400, "invalid_request_error", "Validation"),
    "empty": (400, "invalid_request_error", "Empty"),
    "unauthorized": (401, "authentication_error", "Unauthorized"),
    "model_not_found": (404, "invalid_request_error", "Validation"),
    "request_timeout": (408, "invalid_request_error", "Validation"),
    "payload_too_large": (413, "invalid_request_error", "Validation"),
    "too_many_inputs": (413, "invalid_request_error", "Validation"),
    "unsupported_media_type": (415, "invalid_request_error", "Validation"),
    "input_too_long": (422, "invalid_request_error", "Validation"),
    "overloaded": (429, "rate_limit_error", "Overloaded"),
    "backend": (500, "server_error", "Backend"),
    "unavailable": (503, "server_error", "Unhealthy"),
}


class ApiError(AlbertOnnxError):
    """A request refused with KIND's status; the message names the field or input index."""

    def __init__(
        self, kind: str, message: str, param: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.param = kind, message, param
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return KINDS[self.kind][0]

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": KINDS[self.kind][1],
                "param": self.param,
                "code": self.kind,
            }
        }

    def tei_body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": KINDS[self.kind][2]}


TEI_PATHS = ("/embed", "/", "/invocations")  # the routes answered in TEI's protocol
COHERE_PATH = "/v2/embed"
DTYPES = {"float": "float32", **{name: name for name in get_args(Dtype)}}  # as requests name them


def error_body(path: str | None, error: ApiError) -> Any:
    """ERROR in the protocol of the route at PATH (OpenAI's where the route is not known)."""
    if path == COHERE_PATH:
        return {"message": error.message}
    return error.tei_body() if path in TEI_PATHS else error.openai_body()


def check_json(content_type: str | None) -> None:
    """Refuse a body that is not declared JSON (see the module's docstring)."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            "unsupported_media_type",
            f"the body must be sent as 'Content-Type: application/json', not "
            f"{content_type!r}" if content_type else
            "the body must be sent with 'Content-Type: application/json'",
        )  # fmt: skip


@dataclass
class EmbedCall:
    texts: list[str]
    normalize: bool
    truncate: bool
    encoding: Literal["float", "base64"] = "float"
    field: str = "input"  # how the protocol names the inputs, for error messages
    dtypes: tuple[Dtype, ...] = ("float32",)  # the vectors to answer, each quantized


@dataclass(frozen=True)
class Answers:
    """What the server answers with unless a request asks otherwise, and what it can."""

    dtype: Dtype  # the server's --dtype
    normalize: bool  # the model's: what its ranges were measured on
    ranges: Ranges | None  # the model's calibration, for int8 and uint8

    def dtype_of(self, value: object, param: str) -> Dtype:
        name = DTYPES.get(value) if isinstance(value, str) else None
        if name is None:
            raise ApiError(
                "invalid_request", f"'{param}' must be one of {', '.join(DTYPES)}, not {value!r}",
                param=param,
            )  # fmt: skip
        if name in CALIBRATED and self.ranges is None:
            raise ApiError(
                "invalid_request", f"{name} vectors need the model's calibrated ranges, and "
                "this server's model has none (its operator runs `albert-onnx calibrate`)",
                param=param,
            )  # fmt: skip
        return name  # type: ignore[return-value]

    def check(self, call: EmbedCall, param: str) -> EmbedCall:
        """CALL, refused if it asks for int8 or uint8 of vectors its ranges do not fit."""
        if call.normalize != self.normalize and any(d in CALIBRATED for d in call.dtypes):
            raise ApiError(
                "invalid_request", f"int8 and uint8 vectors are quantized with ranges measured "
                f"on the model's {'normalized' if self.normalize else 'unnormalized'} vectors: "
                f"'normalize' must be {str(self.normalize).lower()} for them", param=param,
            )  # fmt: skip
        return call

    def vectors(self, vectors: np.ndarray, dtype: Dtype) -> np.ndarray:
        return quantize(vectors, dtype, self.ranges)


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError("invalid_request", f"the body is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ApiError(
            "invalid_request", f"the body must be a JSON object, not {type(value).__name__}"
        )
    return value


def _texts(value: object, name: str, max_inputs: int) -> list[str]:
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = value
    else:
        raise ApiError(
            "invalid_request", f"'{name}' must be a string or a list of strings", param=name
        )
    if not texts:
        raise ApiError("empty", f"'{name}' is an empty list: nothing to embed", param=name)
    if len(texts) > max_inputs:
        raise ApiError(
            "too_many_inputs",
            f"'{name}' has {len(texts):,} inputs; this server takes at most {max_inputs:,} "
            "per request",
            param=name,
        )
    if all(isinstance(t, int | list) and not isinstance(t, bool) for t in texts):
        raise ApiError(
            "invalid_request",
            f"'{name}' holds token ids; this server tokenizes itself: send text",
            param=name,
        )
    try:
        check_texts(texts, name=name)
    except InputError as exc:
        raise ApiError("invalid_request", str(exc), param=name) from exc
    return texts


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError("invalid_request", f"'{name}' must be true or false", param=name)
    return value


def _model(request: dict[str, Any], model_name: str) -> None:
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("invalid_request", "'model' must be a string", param="model")
    if model is not None and model != model_name:
        raise ApiError(
            "model_not_found",
            f"model {model!r} is not served here; this server serves {model_name!r}",
            param="model",
        )


def parse_openai(
    body: bytes, model_name: str, dimension: int, max_inputs: int, truncate: bool,
    answers: Answers,
) -> EmbedCall:  # fmt: skip
    request = _object(body)
    _model(request, model_name)
    _no_cutting(request, dimension)
    encoding = request.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if not isinstance(encoding, str) or encoding not in ("float", "base64"):
        raise ApiError(
            "invalid_request", "'encoding_format' must be 'float' or 'base64'",
            param="encoding_format",
        )  # fmt: skip
    asked = request.get("embedding_type")
    dtype = answers.dtype if asked is None else answers.dtype_of(asked, "embedding_type")
    call = EmbedCall(_texts(request.get("input"), "input", max_inputs), answers.normalize,
                     truncate, encoding, dtypes=(dtype,))  # fmt: skip
    return answers.check(call, "embedding_type")


def _no_cutting(request: dict[str, Any], dimension: int, field: str = "dimensions") -> None:
    """FIELD other than the model's own dimension is refused: ALBERT is not
    Matryoshka-trained, so a cut vector would be a worse one, silently."""
    asked = request.get(field)
    if asked is not None and asked != dimension:
        raise ApiError(
            "invalid_request",
            f"'{field}' {asked!r} is not supported: this ALBERT model was not trained to "
            f"be cut (Matryoshka); its vectors have {dimension} dimensions",
            param=field,
        )


def parse_tei(
    body: bytes, dimension: int, max_inputs: int, truncate: bool, answers: Answers
) -> EmbedCall:
    """TEI's fields; what this server cannot honour (left truncation, prompts, cut
    dimensions) is refused rather than ignored."""
    request = _object(body)
    direction = request.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise ApiError(
            "invalid_request", "only 'truncation_direction': 'right' is supported",
            param="truncation_direction",
        )  # fmt: skip
    if request.get("prompt_name") is not None:
        raise ApiError(
            "invalid_request", "'prompt_name' is not supported: the model has no prompts",
            param="prompt_name",
        )  # fmt: skip
    _no_cutting(request, dimension)
    call = EmbedCall(
        _texts(request.get("inputs"), "inputs", max_inputs),
        _flag(request, "normalize", True),
        _flag(request, "truncate", truncate),
        field="inputs",
        dtypes=(answers.dtype,),
    )
    return answers.check(call, "normalize")


INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


def parse_cohere(
    body: bytes, model_name: str, dimension: int, max_inputs: int, truncate: bool,
    answers: Answers,
) -> EmbedCall:  # fmt: skip
    """Cohere's v2 embed fields; images, start truncation and cut dimensions are refused."""
    request = _object(body)
    _model(request, model_name)
    for field in ("images", "inputs"):
        if request.get(field) is not None:
            raise ApiError("invalid_request", f"'{field}' is not supported: send 'texts'",
                           param=field)  # fmt: skip
    input_type = request.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise ApiError(
            "invalid_request", f"'input_type' must be one of {', '.join(INPUT_TYPES)}",
            param="input_type",
        )  # fmt: skip
    _no_cutting(request, dimension, "output_dimension")
    ends = {None: truncate, "END": True, "NONE": False}
    if request.get("truncate") not in ends:
        raise ApiError("invalid_request", "'truncate' must be 'END' or 'NONE' (START is not "
                       "supported)", param="truncate")  # fmt: skip
    types = request.get("embedding_types")
    if types is None:
        types = ["float"]
    if not isinstance(types, list) or not types:
        raise ApiError("invalid_request", "'embedding_types' must be a non-empty list",
                       param="embedding_types")  # fmt: skip
    dtypes = tuple(dict.fromkeys(answers.dtype_of(t, "embedding_types") for t in types))
    call = EmbedCall(_texts(request.get("texts"), "texts", max_inputs), answers.normalize,
                     ends[request.get("truncate")], field="texts", dtypes=dtypes)  # fmt: skip
    return answers.check(call, "embedding_types")


def openai_response(
    vectors: np.ndarray, call: EmbedCall, model_name: str, tokens: int, answers: Answers
) -> dict[str, Any]:
    """Float vectors as JSON numbers or little-endian float32 bytes in base64; the other
    dtypes as numbers (integers) or their own bytes (float16 little-endian)."""
    answered = answers.vectors(vectors, call.dtypes[0])
    if call.encoding == "base64":
        little = answered.astype(answered.dtype.newbyteorder("<"), copy=False)
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        rows = answered.tolist()
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)
        ],
        "model": model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def tei_response(vectors: np.ndarray, call: EmbedCall, answers: Answers) -> list[list[float]]:
    return answers.vectors(vectors, call.dtypes[0]).tolist()


def cohere_response(
    vectors: np.ndarray, call: EmbedCall, tokens: int, answers: Answers
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "embeddings": {
            "float" if dtype == "float32" else dtype: answers.vectors(vectors, dtype).tolist()
            for dtype in call.dtypes
        },
        "texts": call.texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
        "response_type": "embeddings_by_type",
    }
