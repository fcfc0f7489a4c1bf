"""Server-sent events framing for streamed OpenAI responses."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json(payload: dict[str, Any]) -> bytes:
    """Compact JSON bytes (no NaN/Infinity: they are not JSON)."""
    return _encoder.encode(payload).encode()


def sse_event(payload: dict[str, Any]) -> bytes:
    """One `data: <json>` event."""
    return b"data: " + encode_json(payload) + b"\n\n"
