"""Field checks for `SamplingParams`: each failure names its field."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """An allowed range: [low, high], (low, high] with `low_open`, or no upper end (high None).

    Each bound is written once, in `core.sampling_params`, and read by both the HTTP schema
    (`constraints`) and `SamplingParams` validation (`check_int` / `check_range`).
    """

    low: float
    high: float | None = None
    low_open: bool = False

    def constraints(self) -> dict[str, float]:
        """The bound as `gt`/`ge` and `le` keyword constraints (pydantic's `Field` spelling)."""
        result = {"gt" if self.low_open else "ge": self.low}
        if self.high is not None:
            result["le"] = self.high
        return result


class SamplingParamsError(ValueError):
    """An invalid sampling parameter; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check(ok: bool, param: str, message: str) -> None:
    """Raise `SamplingParamsError(param, message)` unless `ok`."""
    if not ok:
        raise SamplingParamsError(param, message)


def is_int(value: object) -> bool:
    """An int that is not a bool: `max_tokens=True` is a caller's bug, not a count."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_bool(param: str, value: object) -> None:
    """A real bool: "yes" or 1 must not silently mean True."""
    check(isinstance(value, bool), param, f"{param} must be a boolean, got {value!r}")


def check_int(param: str, value: object, bound: Bound) -> None:
    """An integer inside `bound` (closed at the low end)."""
    check(is_int(value), param, f"{param} must be an integer, got {value!r}")
    assert isinstance(value, int)
    low = int(bound.low)
    if bound.high is None:
        check(value >= low, param, f"{param} must be >= {low}, got {value}")
    else:
        high = int(bound.high)
        check(low <= value <= high, param, f"{param} must be in [{low}, {high}], got {value}")


def check_range(param: str, value: object, bound: Bound) -> None:
    """A finite number inside `bound`, which has both ends."""
    check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        param,
        f"{param} must be a finite number, got {value!r}",
    )
    assert isinstance(value, (int, float)) and bound.high is not None
    low, high = bound.low, bound.high
    inside = (low < value if bound.low_open else low <= value) and value <= high
    bracket = "(" if bound.low_open else "["
    check(inside, param, f"{param} must be in {bracket}{low:g}, {high:g}], got {value}")


def check_stop_strings(stop: object, max_count: int, max_len: int) -> None:
    """A list of at most `max_count` non-empty strings of at most `max_len` characters."""
    check(isinstance(stop, list), "stop", "stop must be a string or a list of strings")
    assert isinstance(stop, list)
    check(
        len(stop) <= max_count,
        "stop",
        f"stop may hold at most {max_count} strings, got {len(stop)}",
    )
    for item in stop:
        check(isinstance(item, str) and item != "", "stop", "stop strings must be non-empty")
        check(len(item) <= max_len, "stop", f"stop strings are limited to {max_len} characters")


def check_token_id_list(param: str, value: object, max_count: int) -> None:
    """A list of at most `max_count` integer token ids >= 0."""
    check(isinstance(value, list), param, f"{param} must be a list of token ids, got {value!r}")
    assert isinstance(value, list)
    check(len(value) <= max_count, param, f"{param} may hold at most {max_count} ids")
    check(
        all(is_int(t) and t >= 0 for t in value),
        param,
        f"{param} must be integer token ids >= 0",
    )


_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,18}")


def _short(value: object, limit: int = 40) -> str:
    """`repr` cut to `limit` characters: error messages must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def normalized_logit_bias(value: object, max_entries: int, bias_bound: Bound) -> dict[int, float]:
    """Check a token id -> bias mapping; returns it with int keys and float biases."""
    check(
        isinstance(value, dict),
        "logit_bias",
        f"logit_bias must map token ids to biases, got {value!r}",
    )
    assert isinstance(value, dict)
    check(
        len(value) <= max_entries,
        "logit_bias",
        f"logit_bias may hold at most {max_entries} entries",
    )
    normalized: dict[int, float] = {}
    for key, bias in value.items():
        # JSON object keys arrive as strings ("50256"); the sampler indexes by int.
        # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses, and a
        # bounded length keeps int() away from its 4,300-digit limit.
        is_digits = isinstance(key, str) and _TOKEN_ID_KEY.fullmatch(key) is not None
        check(
            is_digits or is_int(key),
            "logit_bias",
            f"logit_bias keys must be token ids, got {_short(key)}",
        )
        token_id = int(key)
        check(token_id >= 0, "logit_bias", "logit_bias keys must be token ids >= 0")
        check_range("logit_bias", bias, bias_bound)
        normalized[token_id] = float(bias)
    return normalized
