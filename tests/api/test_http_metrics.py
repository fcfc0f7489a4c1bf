"""/metrics: every metric of docs/ARCHITECTURE.md, labelled, with vLLM's buckets and counting."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.http_server import running_server
from support.metrics import value

GAUGES = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"]
COUNTERS = [
    "prompt_tokens_total", "generation_tokens_total", "request_success_total",
    "num_preemptions_total", "prefix_cache_queries_total", "prefix_cache_hits_total",
    "request_errors_total",
]  # fmt: skip
# vLLM v1's boundaries (vllm/v1/metrics/loggers.py), so its Grafana dashboards translate.
TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
       20.0, 40.0, 80.0]  # fmt: skip
LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
TOKENS_1_2_5 = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]  # up to max_model_len 1024
ITERATION = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
HISTOGRAMS = {
    "time_to_first_token_seconds": TTFT,
    "inter_token_latency_seconds": ITL,
    "e2e_request_latency_seconds": LATENCY,
    "request_queue_time_seconds": LATENCY,
    "request_prompt_tokens": TOKENS_1_2_5,
    "request_generation_tokens": TOKENS_1_2_5,
    "iteration_tokens_total": ITERATION,
}


@pytest.fixture(scope="module")
def base_url(tiny_model, tokenizer) -> Iterator[str]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine) as (url, _):
        yield url


def exposition(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def declared_types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def bucket_bounds(text: str, name: str) -> list[float]:
    pattern = rf'^gpt2serve_{name}_bucket\{{le="([^"]+)",model_name="tiny"\}} '
    return [float(le) for le in re.findall(pattern, text, re.MULTILINE) if le != "+Inf"]


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def test_every_design_metric_is_exported_with_its_type_and_label(base_url) -> None:
    assert post(base_url, "/v1/completions", {"prompt": "m", "model": "nope"}).status_code == 404
    assert post(base_url, "/v1/completions", {"prompt": "metrics", "max_tokens": 3}).is_success
    text = exposition(base_url)
    types = declared_types(text)
    expected = {
        **{f"gpt2serve_{name}": "gauge" for name in GAUGES},
        **{f"gpt2serve_{name}": "counter" for name in COUNTERS},
        **{f"gpt2serve_{name}": "histogram" for name in HISTOGRAMS},
    }
    for name, kind in expected.items():
        assert types.get(name) == kind, name
        suffix = "_count" if kind == "histogram" else ""
        assert re.search(rf'^{name}{suffix}\{{[^}}]*model_name="tiny"', text, re.MULTILINE), name
    assert value(base_url, "gpt2serve_request_errors_total", code="404") == 1
    for reason in ("stop", "length", "abort"):  # exported from the start, as vLLM
        assert f'finished_reason="{reason}"' in text


@pytest.mark.parametrize("name", sorted(HISTOGRAMS))
def test_histogram_buckets_are_vllms(base_url, name: str) -> None:
    assert bucket_bounds(exposition(base_url), name) == [float(b) for b in HISTOGRAMS[name]]


def test_latency_and_token_histograms_observe_requests(base_url) -> None:
    before = {
        name: value(base_url, f"gpt2serve_{name}_count")
        for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds")
    }
    prompt_before = value(base_url, "gpt2serve_prompt_tokens_total")
    generated_before = value(base_url, "gpt2serve_generation_tokens_total")
    body = {"prompt": [1, 2, 3, 4], "max_tokens": 5, "ignore_eos": True}
    assert post(base_url, "/v1/completions", body).is_success
    assert value(base_url, "gpt2serve_time_to_first_token_seconds_count") == (
        before["time_to_first_token_seconds"] + 1
    )
    assert value(base_url, "gpt2serve_e2e_request_latency_seconds_count") == (
        before["e2e_request_latency_seconds"] + 1
    )
    assert value(base_url, "gpt2serve_prompt_tokens_total") == prompt_before + 4
    assert value(base_url, "gpt2serve_generation_tokens_total") == generated_before + 5


@pytest.mark.parametrize(
    ("path", "body", "choices"),
    [
        ("/v1/completions", {"prompt": "one", "n": 2}, 2),
        ("/v1/completions", {"prompt": ["one", "two", "three"]}, 3),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3}, 3),
        ("/v1/completions", {"prompt": "streamed", "n": 2, "stream": True}, 2),
    ],
)
def test_request_success_counts_each_finished_choice(base_url, path, body, choices) -> None:
    # vLLM v1 fans n > 1 out into child requests and counts each one that finishes.
    before = value(base_url, "gpt2serve_request_success_total", finished_reason="length")
    response = post(base_url, path, {**body, "max_tokens": 3, "ignore_eos": True, "seed": 1})
    assert response.status_code == 200
    after = value(base_url, "gpt2serve_request_success_total", finished_reason="length")
    assert after == before + choices
