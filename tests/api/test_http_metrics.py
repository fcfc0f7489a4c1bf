"""/metrics: every metric of docs/ARCHITECTURE.md, labelled, with vLLM's buckets and counting."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.engine_driver import slow_steps
from support.http_server import running_server
from support.metrics import bucket, histogram_state, value, wait_until

GAUGES = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"]
COUNTERS = [
    "prompt_tokens_total", "generation_tokens_total", "request_success_total",
    "num_preemptions_total", "prefix_cache_queries_total", "prefix_cache_hits_total",
    "request_errors_total",
]  # fmt: skip
# vLLM v1's boundaries (vllm/v1/metrics/loggers.py), so its Grafana dashboards translate.
VLLM_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
             7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
VLLM_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0, 20.0, 40.0, 80.0]  # fmt: skip
VLLM_LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
# Finer below vLLM's where a GPT-2 server's latencies fell into the first bucket.
ITL = [0.001, 0.0025, 0.005, *VLLM_ITL]
E2E = [0.01, 0.025, 0.05, 0.1, 0.2, *VLLM_LATENCY]
# Queue time: sub-millisecond (an idle server) to minutes, not vLLM's 0.3 s and up.
QUEUE = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
         2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]  # fmt: skip
TOKENS_1_2_5 = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]  # up to max_model_len 1024
ITERATION = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
HISTOGRAMS = {
    "time_to_first_token_seconds": VLLM_TTFT,
    "inter_token_latency_seconds": ITL,
    "e2e_request_latency_seconds": E2E,
    "request_queue_time_seconds": QUEUE,
    "request_prompt_tokens": TOKENS_1_2_5,
    "request_generation_tokens": TOKENS_1_2_5,
    "iteration_tokens_total": ITERATION,
}
TTFT_COUNT = "gpt2serve_time_to_first_token_seconds_count"
ITL_HISTOGRAM = "gpt2serve_inter_token_latency_seconds"
E2E_COUNT = "gpt2serve_e2e_request_latency_seconds_count"
GENERATED = "gpt2serve_generation_tokens_total"
QUEUE_HISTOGRAM = "gpt2serve_request_queue_time_seconds"


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
def test_histogram_buckets_are_vllms_refined_where_too_coarse(base_url, name: str) -> None:
    assert bucket_bounds(exposition(base_url), name) == [float(b) for b in HISTOGRAMS[name]]


@pytest.mark.parametrize(("ours", "vllms"), [(ITL, VLLM_ITL), (E2E, VLLM_LATENCY)])
def test_refined_buckets_keep_every_vllm_boundary(ours: list[float], vllms: list[float]) -> None:
    # Any `le` a vLLM dashboard or recording rule names still exists here.
    assert set(vllms) <= set(ours) and ours == sorted(ours)


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


def test_a_request_that_did_not_wait_lands_in_a_sub_millisecond_queue_bucket(base_url) -> None:
    # On an idle engine a request is scheduled in the step right after it arrives (~0.1 ms).
    count_before, _ = histogram_state(base_url, QUEUE_HISTOGRAM)
    below_1ms_before = bucket(base_url, QUEUE_HISTOGRAM, "0.001")
    assert post(base_url, "/v1/completions", {"prompt": [5, 6], "max_tokens": 1}).is_success
    count, _ = histogram_state(base_url, QUEUE_HISTOGRAM)
    assert count == count_before + 1
    assert bucket(base_url, QUEUE_HISTOGRAM, "0.001") == below_1ms_before + 1


STEP_SECONDS = 0.02  # every engine step takes at least this long on `slow_url`


@pytest.fixture(scope="module")
def slow_server(tiny_model, tokenizer) -> Iterator[tuple[str, Engine]]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=256))
    slow_steps(engine, STEP_SECONDS)
    with running_server(engine) as (url, _):
        yield url, engine


CHAT_MESSAGES = [{"role": "user", "content": "per choice"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "per choice", "n": 8}),
        ("/v1/completions", {"prompt": "per choice", "n": 8, "stream": True}),
        ("/v1/completions", {"prompt": ["two", "prompts"], "n": 4, "stream": True}),
        ("/v1/chat/completions", {"messages": CHAT_MESSAGES, "n": 8}),
    ],
)
def test_ttft_and_itl_are_per_choice_with_no_sibling_gaps(slow_server, path, body) -> None:
    """8 choices x 10 tokens: 8 TTFT samples and 8 x 9 ITL samples, each a real step's gap.

    TTFT is per choice, not per HTTP request: vLLM v1 runs `n > 1` as child requests, each
    with its own first token. With steps of >= 20 ms, a gap of <= 5 ms could only be two
    sibling choices' tokens of one step counted as consecutive tokens (the old per-request ITL).
    """
    url, _ = slow_server
    ttft_before = value(url, TTFT_COUNT)
    itl_before, _ = histogram_state(url, ITL_HISTOGRAM)
    short_before = bucket(url, ITL_HISTOGRAM, "0.005")
    full = {**body, "max_tokens": 10, "ignore_eos": True}
    response = httpx.post(f"{url}{path}", json=full, timeout=60)
    assert response.status_code == 200
    assert value(url, TTFT_COUNT) == ttft_before + 8
    itl_count, _ = histogram_state(url, ITL_HISTOGRAM)
    assert itl_count == itl_before + 8 * 9
    assert bucket(url, ITL_HISTOGRAM, "0.005") == short_before


def abort_state(url: str) -> dict[str, float]:
    """What an abort must move: the abort counter, e2e count, tokens generated (and per request)."""
    generated_count, generated_sum = histogram_state(url, "gpt2serve_request_generation_tokens")
    return {
        "aborts": value(url, "gpt2serve_request_success_total", finished_reason="abort"),
        "lengths": value(url, "gpt2serve_request_success_total", finished_reason="length"),
        "e2e": value(url, E2E_COUNT),
        "generated": value(url, GENERATED),
        "requests": generated_count,
        "generated_per_request": generated_sum,
    }


def engine_idle(engine: Engine) -> bool:
    return not engine.has_unfinished_requests()


def assert_one_abort_recorded(url: str, engine: Engine, before: dict, min_tokens: int) -> None:
    """Exactly one abort, with its e2e latency and at least `min_tokens` generated tokens."""
    assert wait_until(lambda: value(url, E2E_COUNT) == before["e2e"] + 1)
    assert wait_until(lambda: engine_idle(engine))
    after = abort_state(url)
    assert after["aborts"] == before["aborts"] + 1
    assert after["lengths"] == before["lengths"]
    assert after["e2e"] == before["e2e"] + 1
    generated = after["generated"] - before["generated"]
    assert generated >= max(min_tokens, 1)
    assert after["requests"] == before["requests"] + 1
    assert after["generated_per_request"] - before["generated_per_request"] == generated


def carries_text(event: str) -> bool:
    """Whether an SSE `data:` event carries generated text (so at least one token)."""
    choice = json.loads(event.removeprefix("data: "))["choices"][0]
    return bool(choice.get("text") or choice.get("delta", {}).get("content"))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_client_gone_mid_stream_counts_one_abort_with_its_tokens(slow_server, path) -> None:
    url, engine = slow_server
    before = abort_state(url)
    body = {"max_tokens": 900, "ignore_eos": True, "stream": True}
    body |= {"prompt": "A long story"} if "chat" not in path else {"messages": CHAT_MESSAGES}
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=30) as response:
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        received = [next(events) for _ in range(5)]
    assert_one_abort_recorded(url, engine, before, sum(map(carries_text, received)))


def test_client_gone_before_a_non_streamed_answer_counts_one_abort(slow_server) -> None:
    url, engine = slow_server
    before = abort_state(url)
    body = {"prompt": "A long story", "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # 900 steps of >= 20 ms: only an abort ends it
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    assert_one_abort_recorded(url, engine, before, 1)
