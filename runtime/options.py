"""The runtime's choices as Literal types, and their checks where the API receives them.

The CLI uses the same Literal types (typer turns them into choices), so the API and the
command line accept exactly the same values and an API caller gets the same clear error.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from albert_onnx.errors import OptionError

Provider = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "int8", "fp16"]
Pooling = Literal["mean", "cls", "max", "none"]
LongTexts = Literal["truncate", "chunk"]
OnError = Literal["raise", "skip"]
Dtype = Literal["float32", "float16"]


def check_choice(name: str, value: Any, allowed: Any) -> Any:
    """VALUE if it is one of the Literal type ALLOWED's values, else an OptionError."""
    choices = get_args(allowed)
    if value not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def check_field(name: str, value: Any) -> str:
    """VALUE as the name of a record's field: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise OptionError(f"{name} must be a field name, not {value!r}")
    return value


def check_positive(name: str, value: Any) -> int:
    """VALUE as an int >= 1, else an OptionError (0 never silently means 'the default')."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value
