"""Disconnects, overload, engine death and SIGTERM drain against a live server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.engine_driver import all_blocks_free, slow_steps
from support.http_server import free_port, running_server
from support.metrics import value, wait_until


def metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    match = re.search(rf"^gpt2serve_{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def test_disconnect_mid_stream_frees_everything(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine) as (url, _):
        body = {"prompt": "A long story", "max_tokens": 900, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert all(line.startswith("data: ") for line in received if line)
            assert metric(url, "num_requests_running") == 1
            assert metric(url, "kv_cache_usage_perc") > 0
        for _ in range(100):
            if metric(url, "num_requests_running") == 0:
                break
            time.sleep(0.05)
        assert metric(url, "num_requests_running") == 0
        assert metric(url, "kv_cache_usage_perc") == 0
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks


def test_non_streamed_disconnect_aborts_quietly(tiny_model, tokenizer, caplog) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    slow_steps(engine, 0.01)  # 900 tokens take >= 9 s: only an abort ends the request sooner
    with running_server(engine) as (url, app):
        body = {"prompt": "A long story", "max_tokens": 900, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
        assert wait_until(lambda: all_blocks_free(engine), timeout=5)
        assert app.state.ctx.num_open_sequences == 0
        assert value(url, "gpt2serve_request_errors_total", code="500") == 0
        assert value(url, "gpt2serve_request_success_total", finished_reason="length") == 0
        assert not [r for r in caplog.records if r.exc_info is not None]
        after = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert after.status_code == 200


def test_streamed_burst_beyond_waiting_limit_gets_503_and_the_rest_complete(
    tiny_model, tokenizer
) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256, max_num_seqs=2))
    slow_steps(engine, 0.005)
    with running_server(engine, max_waiting_requests=3) as (url, app):

        async def one(client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, bytes]:
            body = {
                "prompt": f"Request {i}", "max_tokens": 40, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True},
            }  # fmt: skip
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                return response, await response.aread()

        async def burst() -> list[tuple[httpx.Response, bytes]]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(one(client, i) for i in range(16)))

        results = asyncio.run(asyncio.wait_for(burst(), timeout=120))
        statuses = [response.status_code for response, _ in results]
        assert set(statuses) == {200, 503}, statuses
        for response, raw in results:
            if response.status_code == 503:
                assert response.headers["retry-after"]
                assert "overloaded" in json.loads(raw)["error"]["message"]
                continue
            events = raw.decode().split("\n\n")
            assert events[-2:] == ["data: [DONE]", ""]
            assert json.loads(events[-3][6:])["usage"]["completion_tokens"] == 40
        assert wait_until(lambda: app.state.ctx.num_open_sequences == 0)
        assert value(url, "gpt2serve_request_errors_total", code="503") == statuses.count(503)


def test_burst_beyond_waiting_limit_gets_503_and_the_rest_complete(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256, max_num_seqs=2))
    with running_server(engine, max_waiting_requests=3) as (url, _):

        async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
            body = {"prompt": f"Request {i}", "max_tokens": 40, "ignore_eos": True}
            return await client.post(f"{url}/v1/completions", json=body)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(one(client, i) for i in range(16)))

        responses = asyncio.run(asyncio.wait_for(burst(), timeout=120))
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"]
                assert "overloaded" in response.json()["error"]["message"]
            else:
                assert response.json()["usage"]["completion_tokens"] == 40
        assert metric(url, "request_errors_total") >= statuses.count(503)


def engine_failing_at_step(tiny_model, tokenizer, step: int) -> Engine:
    """An engine whose forward raises from its `step`-th call on (a simulated device failure)."""
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    calls = {"n": 0}
    real_execute = engine.runner.execute

    def failing_execute(scheduler_output):
        calls["n"] += 1
        if calls["n"] >= step:
            raise RuntimeError("simulated device failure")
        return real_execute(scheduler_output)

    engine.runner.execute = failing_execute
    return engine


def test_engine_death_reaches_clients_and_health(tiny_model, tokenizer) -> None:
    engine = engine_failing_at_step(tiny_model, tokenizer, step=4)
    with running_server(engine) as (url, _):
        body = {"prompt": "doomed", "max_tokens": 50, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "engine" in error["message"] and "Traceback" not in error["message"]
        assert value(url, "gpt2serve_request_errors_total", code="503") == 1
        assert httpx.get(f"{url}/health").status_code == 503
        after = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=30)
        assert after.status_code == 503 and "engine" in after.json()["error"]["message"]


def test_engine_death_answers_a_non_streamed_request_with_5xx(tiny_model, tokenizer) -> None:
    engine = engine_failing_at_step(tiny_model, tokenizer, step=4)
    with running_server(engine) as (url, app):
        body = {"prompt": "doomed", "max_tokens": 50, "ignore_eos": True}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert 500 <= response.status_code < 600, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "engine" in error["message"] and "simulated" not in response.text
        assert value(url, "gpt2serve_request_errors_total", code=str(response.status_code)) == 1
        assert app.state.ctx.num_open_sequences == 0


@contextlib.contextmanager
def server_process(*flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (base_url, process) of `python -m gpt2serve` once healthy; kill it afterwards."""
    port = free_port()
    env = {**os.environ, "GPT2SERVE_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "gpt2serve", "--port", str(port), *flags]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "server did not start"
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.reliability
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_in_flight_then_exits_zero(tmp_path) -> None:
    flags = ("--model", "random:gpt2", "--num-kv-blocks", "64", "--shutdown-timeout", "2")
    with server_process(*flags) as (url, process):
        short = {"prompt": "short", "max_tokens": 5, "stream": True, "ignore_eos": True}
        endless = {"prompt": "endless", "max_tokens": 1000, "stream": True, "ignore_eos": True}
        with (
            httpx.stream("POST", f"{url}/v1/completions", json=short, timeout=60) as first,
            httpx.stream("POST", f"{url}/v1/completions", json=endless, timeout=60) as second,
        ):
            first_lines, second_lines = first.iter_lines(), second.iter_lines()
            next(first_lines), next(second_lines)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = httpx.post(f"{url}/v1/completions", json={"prompt": "late"}, timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "shutting down" in refused.json()["error"]["message"]
            first_data = [x[6:] for x in first_lines if x.startswith("data: ")]
            second_data = [x[6:] for x in second_lines if x.startswith("data: ")]
        assert first_data[-1] == second_data[-1] == "[DONE]"
        assert json.loads(first_data[-2])["choices"][0]["finish_reason"] == "length"
        assert json.loads(second_data[-2])["choices"][0]["finish_reason"] == "abort"
        assert process.wait(timeout=30) == 0


@pytest.mark.reliability
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_during_drain_aborts_and_exits_at_once(second: signal.Signals) -> None:
    # A drain long enough that only the second signal can end this test in time: 1000 tokens
    # of gpt2 on a CPU take far longer than the few seconds allowed below.
    flags = ("--model", "random:gpt2", "--device", "cpu", "--num-kv-blocks", "128",
             "--shutdown-timeout", "120")  # fmt: skip
    with server_process(*flags) as (url, process):
        endless = {"prompt": "endless", "max_tokens": 1000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=endless, timeout=60) as stream:
            lines = stream.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert process.poll() is None, "the first signal must drain, not exit"
            refused = httpx.post(f"{url}/v1/completions", json={"prompt": "late"}, timeout=10)
            assert refused.status_code == 503
            process.send_signal(second)
            sent = time.monotonic()
            try:
                status = process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pytest.fail("a second signal during the drain did not exit the process")
            took = time.monotonic() - sent
            data = [x[6:] for x in lines if x.startswith("data: ")]
        assert took < 3, f"exited {took:.1f}s after the second signal"
        # Death by that signal (uvicorn re-raises it), or the watchdog's 128 + signal.
        assert status in (-second, 128 + second), status
        # The in-flight request was aborted, and its client told so.
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["choices"][0]["finish_reason"] == "abort"
