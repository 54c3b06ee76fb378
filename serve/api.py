"""The two wire protocols, HTTP-framework-free: request bodies parsed and checked into one
`EmbedCall`, vectors shaped into each protocol's response, and `ApiError`s into each
protocol's error body.

- OpenAI `POST /v1/embeddings`: `input` (a string or a list of strings), `model`,
  `encoding_format` (`float` or `base64`: float32 little-endian, which the openai client
  asks for by default), `dimensions` (refused: ALBERT is not Matryoshka-trained), `user`.
- text-embeddings-inference `POST /embed` (and `POST /`, `POST /invocations`, which TEI
  serves the same way): `inputs`, `normalize` (default true), `truncate` (default: the
  server's); the response is a bare list of vectors.

Both take `Content-Type: application/json` only: any other type is what a web page can make
a browser send cross-site without a CORS preflight, so it is refused (415).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from albert_onnx.errors import AlbertOnnxError, InputError
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


def error_body(path: str | None, error: ApiError) -> Any:
    """ERROR in the protocol of the route at PATH (OpenAI's where the route is not known)."""
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


def parse_openai(
    body: bytes, model_name: str, dimension: int, max_inputs: int, normalize: bool, truncate: bool
) -> EmbedCall:
    request = _object(body)
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("invalid_request", "'model' must be a string", param="model")
    if model is not None and model != model_name:
        raise ApiError(
            "model_not_found",
            f"model {model!r} is not served here; this server serves {model_name!r}",
            param="model",
        )
    _no_cutting(request, dimension)
    encoding = request.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if not isinstance(encoding, str) or encoding not in ("float", "base64"):
        raise ApiError(
            "invalid_request", "'encoding_format' must be 'float' or 'base64'",
            param="encoding_format",
        )  # fmt: skip
    return EmbedCall(
        _texts(request.get("input"), "input", max_inputs), normalize, truncate, encoding
    )


def _no_cutting(request: dict[str, Any], dimension: int) -> None:
    """`dimensions` other than the model's own is refused: ALBERT is not Matryoshka-trained,
    so a cut vector would be a worse one, silently."""
    asked = request.get("dimensions")
    if asked is not None and asked != dimension:
        raise ApiError(
            "invalid_request",
            f"'dimensions' {asked!r} is not supported: this ALBERT model was not trained to "
            f"be cut (Matryoshka); its vectors have {dimension} dimensions",
            param="dimensions",
        )


def parse_tei(body: bytes, dimension: int, max_inputs: int, truncate: bool) -> EmbedCall:
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
    return EmbedCall(
        _texts(request.get("inputs"), "inputs", max_inputs),
        _flag(request, "normalize", True),
        _flag(request, "truncate", truncate),
        field="inputs",
    )


def openai_response(
    vectors: np.ndarray, call: EmbedCall, model_name: str, tokens: int
) -> dict[str, Any]:
    if call.encoding == "base64":
        rows = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        rows = vectors.tolist()
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)
        ],
        "model": model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def tei_response(vectors: np.ndarray) -> list[list[float]]:
    return vectors.tolist()
