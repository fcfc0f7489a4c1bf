"""Admission counts a request's own sequences (prompts x n) before it is let in."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.engine_driver import slow_steps
from support.http_server import running_server
from support.metrics import wait_until


@pytest.fixture
def served(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256, max_num_seqs=2))
    slow_steps(engine, 0.01)
    with running_server(engine, max_waiting_requests=8, max_prompts_per_request=64) as (url, app):
        yield url, app


def stream(client: httpx.Client, url: str, body: dict) -> contextlib.AbstractContextManager:
    body = {"max_tokens": 300, "ignore_eos": True, "stream": True, **body}
    return client.stream("POST", f"{url}/v1/completions", json=body)


def test_one_request_cannot_queue_past_the_limit(served) -> None:
    url, app = served
    with (
        httpx.Client(timeout=60) as client,
        stream(client, url, {"prompt": "running", "n": 2}) as running,
    ):
        lines = running.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # both choices hold the engine's 2 running slots
        with stream(client, url, {"prompt": ["a", "b", "c", "d"]}) as waiting:
            assert waiting.status_code == 200
            ctx = app.state.ctx
            assert wait_until(lambda: ctx.num_waiting_sequences == 4)
            # 4 waiting + 6 new > 8: before, only the 4 already waiting were compared.
            body = {"prompt": ["x", "y", "z"], "n": 2, "max_tokens": 2}
            over = client.post(f"{url}/v1/completions", json=body)
            assert over.status_code == 503, over.text
            assert over.headers["retry-after"]
    assert wait_until(lambda: app.state.ctx.num_open_sequences == 0)


def test_a_request_larger_than_the_queue_is_a_400_not_a_retry(served) -> None:
    url, app = served
    body = {"prompt": ["a"] * 5, "n": 2, "max_tokens": 2}  # 10 sequences, the queue holds 8
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "n" and "10 sequences" in error["message"]
    assert app.state.ctx.num_open_sequences == 0


def test_thousands_of_prompts_are_refused_before_tokenizing(served) -> None:
    url, app = served
    body = {"prompt": [[1]] * 4096, "n": 4, "max_tokens": 1}  # 16,384 sequences before
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
    assert "at most 64" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5
    assert (
        app.state.ctx.num_open_sequences == 0
        and app.state.ctx.engine.engine.scheduler.num_running == 0
    )


def test_max_tokens_limit_and_default(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine, max_tokens_limit=8, default_max_tokens=5) as (url, _):
        chat_only_limit = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": None}
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_only_limit,
                          timeout=30).status_code == 200  # fmt: skip
        chat = {"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}
        response = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30)
        assert response.json()["usage"]["completion_tokens"] == 5  # omitted: the default
        nulled = {"prompt": "hi", "max_tokens": None, "ignore_eos": True}
        response = httpx.post(f"{url}/v1/completions", json=nulled, timeout=30)
        assert response.json()["usage"]["completion_tokens"] == 5
        over = httpx.post(
            f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 9}, timeout=30
        )
        assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
        assert "at most 8" in over.json()["error"]["message"]


def test_a_limit_below_the_defaults_caps_them_instead_of_refusing(tiny_model, tokenizer) -> None:
    """--max-tokens-limit 4 with the default 256: a chat that omits max_tokens gets 4, not 400."""
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    with running_server(engine, max_tokens_limit=4) as (url, _):
        chat = {"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}
        response = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 4
