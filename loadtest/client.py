"""One streamed request against any OpenAI-compatible server, with per-token timestamps."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

# How much of a non-JSON error body a result keeps.
MAX_BODY_CHARS = 200


@dataclass
class RequestResult:
    """What one request measured (times in seconds)."""

    success: bool
    prompt_len: int
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    start: float = 0.0
    status_code: int | None = None  # None: no HTTP answer (connection error)


def http_error(status_code: int, body: bytes) -> str:
    """`HTTP <status>: <message>`, the message from the OpenAI error envelope when there is one."""
    text = body.decode("utf-8", errors="replace")
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, TypeError, KeyError):
        message = None
    if not isinstance(message, str):  # not the envelope: the start of whatever it sent
        message = " ".join(text.split())[:MAX_BODY_CHARS] or "(empty body)"
    return f"HTTP {status_code}: {message}"


@dataclass
class RequestSpec:
    """A request to send: token-id or text prompt, and how many tokens to ask for."""

    prompt: list[int] | str
    prompt_len: int
    output_len: int


async def send_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    spec: RequestSpec,
    ignore_eos: bool,
    api_key: str | None = None,
) -> RequestResult:
    """Stream one completion; TTFT and ITL are measured between content-bearing chunks."""
    body = {
        "model": model,
        "prompt": spec.prompt,
        "max_tokens": spec.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    result = RequestResult(success=False, prompt_len=spec.prompt_len, start=time.perf_counter())
    last = result.start
    chunks_with_text = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            result.status_code = response.status_code
            if response.status_code != 200:
                result.error = http_error(response.status_code, await response.aread())
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message", chunk["error"]))
                    return result
                now = time.perf_counter()
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if any(c.get("text") for c in chunk.get("choices", [])):
                    if chunks_with_text == 0:
                        result.ttft = now - result.start
                    else:
                        result.itl.append(now - last)
                    chunks_with_text += 1
                    last = now
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.latency = time.perf_counter() - result.start
    result.output_tokens = result.output_tokens or chunks_with_text
    result.success = chunks_with_text > 0
    if not result.success:
        result.error = "no tokens received"
    return result
