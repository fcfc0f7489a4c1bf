"""The loadtest takes the server's URL with or without `/v1`, and reports the server's errors."""

from __future__ import annotations

import asyncio
import json

import pytest

from gpt2serve.loadtest.__main__ import main as loadtest_main
from gpt2serve.loadtest.client import MAX_BODY_CHARS, RequestResult, http_error
from gpt2serve.loadtest.runner import completions_url, run_load
from gpt2serve.loadtest.stats import MAX_DISTINCT_ERRORS, OTHER_ERRORS, count_errors
from gpt2serve.loadtest.workload import build_requests
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import free_port, running_server

API_KEY = "load-key"
NO_SUCH_MODEL = "the model 'no-such-model' does not exist; this server serves 'tiny'"


@pytest.fixture(scope="module")
def server_url(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine, api_key=API_KEY) as (url, _):
        yield url


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://host:8000", "http://host:8000/v1/completions"),
        ("http://host:8000/", "http://host:8000/v1/completions"),
        ("http://host:8000/v1", "http://host:8000/v1/completions"),
        ("http://host:8000/v1/", "http://host:8000/v1/completions"),
        ("http://host:8000/v1/completions", "http://host:8000/v1/completions"),
        ("  https://host/gpt2/v1//  ", "https://host/gpt2/v1/completions"),  # behind a prefix
        ("http://v1", "http://v1/v1/completions"),  # a host named v1 is no path
    ],
)
def test_completions_url_with_or_without_v1(base_url: str, expected: str) -> None:
    assert completions_url(base_url) == expected


@pytest.mark.parametrize("base_url", ["127.0.0.1:8000", "host:8000/v1", "ftp://host/v1", "http://"])
def test_a_base_url_that_is_no_http_url_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="--base-url must be an http"):
        completions_url(base_url)


def test_http_error_reads_the_openai_envelope() -> None:
    envelope = {"error": {"message": "bad max_tokens", "type": "x", "param": None, "code": 400}}
    assert http_error(400, json.dumps(envelope).encode()) == "HTTP 400: bad max_tokens"
    # Not the envelope (a proxy's page, other JSON, nothing): the start of the body, on one line.
    html = b"<html>\n<body>502 Bad Gateway</body>\n</html>" + b"x" * 1000
    message = http_error(502, html)
    assert message.startswith("HTTP 502: <html> <body>502 Bad Gateway")
    assert len(message) == len("HTTP 502: ") + MAX_BODY_CHARS
    assert http_error(500, b'{"detail": "boom"}') == 'HTTP 500: {"detail": "boom"}'
    assert http_error(500, b'{"error": "boom"}') == 'HTTP 500: {"error": "boom"}'
    assert http_error(503, b"") == "HTTP 503: (empty body)"
    assert http_error(400, b"\xff\xfe") == "HTTP 400: \ufffd\ufffd"


def test_errors_are_counted_by_message_and_capped() -> None:
    failed = [RequestResult(False, 1, error=f"HTTP 400: prompt {i}") for i in range(30)]
    failed += [RequestResult(False, 1, error="HTTP 404: gone")] * 3 + [RequestResult(False, 1)]
    errors = count_errors([*failed, RequestResult(True, 1)])
    assert next(iter(errors)) == "HTTP 404: gone" and errors["HTTP 404: gone"] == 3
    assert len(errors) == MAX_DISTINCT_ERRORS + 1
    assert sum(errors.values()) == 34  # every failure counted once, the successful one not
    assert errors[OTHER_ERRORS] == 34 - 3 - (MAX_DISTINCT_ERRORS - 1)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_live_server_with_or_without_v1(server_url: str, suffix: str) -> None:
    specs = build_requests(2, 8, 4, seed=5)
    summary, results = asyncio.run(
        run_load(server_url + suffix, "tiny", specs, api_key=API_KEY, progress=False)
    )
    assert summary.completed == 2 and summary.failed == 0, summary.errors
    assert all(r.status_code == 200 and r.output_tokens == 4 for r in results)


def test_live_server_errors_carry_the_servers_message(server_url: str) -> None:
    specs = build_requests(2, 8, 4, seed=6)
    summary, results = asyncio.run(
        run_load(server_url, "no-such-model", specs, api_key=API_KEY, progress=False)
    )
    assert summary.errors == {f"HTTP 404: {NO_SUCH_MODEL}": 2}
    assert [r.status_code for r in results] == [404, 404]
    summary, _ = asyncio.run(run_load(server_url + "/v1", "tiny", specs, progress=False))
    assert summary.errors == {"HTTP 401: invalid or missing API key": 2}
    too_long = build_requests(1, 8, 2000, max_context=4096)  # the server's context is smaller
    summary, _ = asyncio.run(
        run_load(server_url, "tiny", too_long, api_key=API_KEY, progress=False)
    )
    [(message, count)] = summary.errors.items()
    assert message.startswith("HTTP 400: ") and "max_tokens" in message and count == 1


def test_cli_prints_the_servers_message(server_url: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        loadtest_main([
            "--base-url", f"{server_url}/v1/", "--model", "no-such-model", "--api-key", API_KEY,
            "--num-requests", "2", "--input-len", "4", "--output-len", "2", "--no-progress",
        ])  # fmt: skip
    assert exit_info.value.code == 1  # every request failed
    assert f"error x2: HTTP 404: {NO_SUCH_MODEL}" in capsys.readouterr().out


def test_cli_refuses_a_base_url_without_a_scheme() -> None:
    with pytest.raises(SystemExit) as exit_info:
        loadtest_main(["--base-url", "127.0.0.1:8000", "--model", "m", "--num-requests", "1"])
    assert "--base-url must be an http" in str(exit_info.value.code)


def test_connection_errors_have_no_status() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    summary, results = asyncio.run(
        run_load(url, "m", build_requests(1, 4, 2), progress=False, timeout=5)
    )
    assert summary.failed == 1 and results[0].status_code is None
    [(message, _)] = summary.errors.items()
    assert message.startswith("ConnectError")
