"""Disconnects, overload, engine death and SIGTERM drain against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from server.engine import Engine, EngineLimits
from support.http_server import free_port, running_server


def metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    match = re.search(rf"^gpt2serve_{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def test_disconnect_mid_stream_frees_everything(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineLimits(num_blocks=128))
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


def test_burst_beyond_waiting_limit_gets_503_and_the_rest_complete(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineLimits(num_blocks=256, max_num_seqs=2))
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


def test_engine_death_reaches_clients_and_health(tiny_model, tokenizer) -> None:
    engine = Engine(tiny_model, tokenizer, EngineLimits(num_blocks=64))
    calls = {"n": 0}
    real_execute = engine.runner.execute

    def failing_execute(scheduler_output):
        calls["n"] += 1
        if calls["n"] >= 4:
            raise RuntimeError("simulated device failure")
        return real_execute(scheduler_output)

    engine.runner.execute = failing_execute
    with running_server(engine) as (url, _):
        body = {"prompt": "doomed", "max_tokens": 50, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "engine" in error["message"] and "Traceback" not in error["message"]
        assert httpx.get(f"{url}/health").status_code == 503
        after = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=30)
        assert after.status_code == 503 and "engine" in after.json()["error"]["message"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_in_flight_then_exits_zero(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "GPT2SERVE_LOG_LEVEL": "warning"}
    command = [
        sys.executable, "-m", "server", "--model", "random:gpt2", "--port", str(port),
        "--num-kv-blocks", "64", "--shutdown-timeout", "2",
    ]  # fmt: skip
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
            assert refused.status_code == 503
            first_events = [json.loads(x[6:]) for x in first_lines if x.startswith("data: {")]
            second_events = [json.loads(x[6:]) for x in second_lines if x.startswith("data: {")]
        assert first_events[-1]["choices"][0]["finish_reason"] == "length"
        assert second_events[-1]["choices"][0]["finish_reason"] == "abort"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
