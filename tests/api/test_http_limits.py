"""Limits: 413 for big bodies (chunked too), field caps, defaults that fit the KV cache."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server
from support.metrics import value

MAX_BYTES = 16384
CACHE_TOKENS = 7 * 16  # 8 blocks of 16, one of them the null block


@pytest.fixture(scope="module")
def base_url(tiny_model, tokenizer) -> Iterator[str]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=8))
    with running_server(engine, max_request_bytes=MAX_BYTES) as (url, _):
        yield url


def assert_error(response: httpx.Response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]
    return error


def chunked(payload: bytes, size: int = 1000) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, without Content-Length."""
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


def errors_413(url: str) -> float:
    return value(url, "gpt2serve_request_errors_total", code="413")


def test_chunked_body_over_the_limit_is_413_and_counted(base_url) -> None:
    before = errors_413(base_url)
    payload = json.dumps({"prompt": "x" * (2 * MAX_BYTES), "max_tokens": 1}).encode()
    response = httpx.post(
        f"{base_url}/v1/completions",
        content=chunked(payload),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert "content-length" not in response.request.headers
    error = assert_error(response, 413, f"exceeds {MAX_BYTES} bytes")
    assert error["type"] == "invalid_request_error"
    assert errors_413(base_url) == before + 1


def test_declared_length_over_the_limit_is_413_and_counted(base_url) -> None:
    before = errors_413(base_url)
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x" * (2 * MAX_BYTES)}]},
        timeout=30,
    )
    assert int(response.request.headers["content-length"]) > MAX_BYTES
    assert_error(response, 413, f"exceeds {MAX_BYTES} bytes")
    assert errors_413(base_url) == before + 1


def test_chunked_body_under_the_limit_is_served(base_url, tokenizer) -> None:
    prompt = "Hello" * 100
    payload = json.dumps({"prompt": prompt, "max_tokens": 2}).encode()
    response = httpx.post(
        f"{base_url}/v1/completions",
        content=chunked(payload, 64),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt))


@pytest.mark.parametrize(
    ("size", "status"),
    [(1024, 200), (1025, 400)],
)
def test_logit_bias_size_cap(base_url, size: int, status: int) -> None:
    bias = {str(token): 0.5 for token in range(size)}
    body = {"prompt": "x", "max_tokens": 1, "logit_bias": bias}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=30)
    if status == 400:
        assert_error(response, 400, "at most 1024 entries")
    else:
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("stop", "status"),
    [(["s" * 256], 200), (["s" * 257], 400), (["a"] * 16, 200), (["a"] * 17, 400)],
)
def test_stop_string_caps(base_url, stop: list[str], status: int) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "stop": stop}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    if status == 400:
        assert assert_error(response, 400, "stop")["param"] == "stop"
    else:
        assert response.status_code == 200, response.text


def test_chat_without_max_tokens_fills_what_the_cache_holds(base_url) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me everything"}], "ignore_eos": True}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["choices"][0]["finish_reason"] == "length"
    # The cache (112 tokens) is smaller than the context (1024): it bounds the default.
    assert result["usage"]["total_tokens"] == CACHE_TOKENS


def test_completion_with_null_max_tokens_fills_what_the_cache_holds(base_url) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": None, "ignore_eos": True}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["total_tokens"] == CACHE_TOKENS


def test_prompt_filling_the_cache_still_names_the_numbers(base_url) -> None:
    body = {"prompt": [1] * CACHE_TOKENS, "max_tokens": None}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=30)
    assert_error(response, 400, f"do not fit the whole KV cache ({CACHE_TOKENS} tokens)")
