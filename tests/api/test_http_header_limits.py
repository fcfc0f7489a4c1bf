"""Request heads are bounded in size, count and time; slow bodies are cut off (431 / 408)."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx
import pytest

from gpt2serve.server.api.http_limits import LINGER_SECONDS
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server

pytestmark = pytest.mark.reliability  # the bad-input / limits part of the suite


@pytest.fixture(scope="module")
def served(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=64))
    limits = {"max_header_bytes": 8192, "max_headers": 20, "header_timeout": 1.0,
              "body_timeout": 1.0}  # fmt: skip
    with running_server(engine, **limits) as (url, _):
        yield url


def raw_exchange(url: str, payload: bytes, pause: float = 0.0, read_timeout: float = 10) -> bytes:
    """Send `payload` on a fresh socket (optionally in two halves with a pause); read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        half = len(payload) // 2 if pause else len(payload)
        sock.sendall(payload[:half])
        time.sleep(pause)
        with contextlib.suppress(OSError):  # the server may already have answered and closed
            sock.sendall(payload[half:])
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"] if body else {}


def test_oversized_header_is_431_before_it_is_buffered(served) -> None:
    # 20 MB: the client is still sending long after the refusal; without a lingering close
    # its socket is reset and the 431 lost (every time at this size, sometimes at 2 MB).
    big = b"x-big: " + b"a" * 20_000_000 + b"\r\n"
    request = b"GET /health HTTP/1.1\r\nhost: t\r\n" + big + b"\r\n"
    started = time.monotonic()
    status, error = status_and_error(raw_exchange(served, request))
    assert status == 431 and "8192 bytes" in error["message"]
    assert time.monotonic() - started < 5
    assert httpx.get(f"{served}/health").status_code == 200  # nobody else was held up


def test_a_refused_client_that_keeps_sending_is_cut_off(served) -> None:
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 10_000)
        started = time.monotonic()
        with pytest.raises(OSError):  # reset or broken pipe once the linger time is up
            while time.monotonic() - started < 10:
                sock.sendall(b"a" * 1000)
                time.sleep(0.05)
        assert LINGER_SECONDS - 0.5 < time.monotonic() - started < LINGER_SECONDS + 3


def test_too_many_headers_is_431(served) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(30))
    answer = raw_exchange(served, b"GET /health HTTP/1.1\r\nhost: t\r\n" + headers + b"\r\n")
    status, error = status_and_error(answer)
    assert status == 431 and "at most 20 headers" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_headers_within_the_limits_pass(served) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(15)}
    assert httpx.get(f"{served}/health", headers=headers).status_code == 200


def test_a_client_that_never_finishes_its_headers_is_timed_out(served) -> None:
    started = time.monotonic()
    answer = raw_exchange(served, b"GET /health HTTP/1.1\r\nhost: t\r\nx-slow: ", read_timeout=10)
    status, _ = status_and_error(answer)
    assert status == 408
    assert time.monotonic() - started < 5


def test_a_silent_connection_is_closed(served) -> None:
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5


def test_a_body_that_never_arrives_is_cut_off(served) -> None:
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n")  # fmt: skip
    started = time.monotonic()
    answer = raw_exchange(served, head + b'{"prompt": ', read_timeout=10)
    assert time.monotonic() - started < 5
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert httpx.post(f"{served}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                      timeout=30).status_code == 200  # fmt: skip


def test_keep_alive_requests_each_get_their_own_budget(served) -> None:
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(f"{served}/health").status_code == 200
            time.sleep(0.3)  # 1.5 s in all: longer than one head's 1 s budget
