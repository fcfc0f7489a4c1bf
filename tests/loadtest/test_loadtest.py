"""The load generator against a live gpt2serve, plus its statistics."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from gpt2serve.loadtest.__main__ import main as loadtest_main
from gpt2serve.loadtest.client import RequestResult
from gpt2serve.loadtest.runner import run_load
from gpt2serve.loadtest.stats import percentile, summarize
from gpt2serve.loadtest.workload import build_requests, poisson_delays
from support.http_server import running_server

# What the server answers for a model it does not serve, as the summary reports it.
NO_SUCH_MODEL = "HTTP 404: the model 'no-such-model' does not exist; this server serves 'tiny'"


@pytest.fixture(scope="module")
def server_url():
    from gpt2serve.model.tokenizer import Tokenizer
    from gpt2serve.model.weights import load_model
    from gpt2serve.server.engine.engine import Engine, EngineConfig

    engine = Engine(
        load_model("random:tiny"), Tokenizer.from_tiktoken(), EngineConfig(num_blocks=256)
    )
    with running_server(engine) as (url, _):
        yield url


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile(list(range(101)), 90) == 90
    assert percentile([], 50) == 0.0


def test_summary_definitions() -> None:
    results = [
        RequestResult(True, 10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1] * 4),
        RequestResult(True, 20, output_tokens=3, ttft=0.2, latency=0.4, itl=[0.1, 0.1]),
        RequestResult(False, 7, error="HTTP 503: overloaded"),
    ]
    summary = summarize(results, duration=2.0)
    assert summary.completed == 2 and summary.failed == 1
    assert summary.total_output_tokens == 8 and summary.output_throughput == 4.0
    assert summary.tpot_ms["mean"] == pytest.approx(100.0)  # (0.5-0.1)/4 and (0.4-0.2)/2
    assert summary.ttft_ms["p50"] == pytest.approx(150.0)
    assert summary.errors == {"HTTP 503: overloaded": 1}


def test_workload_lengths_and_context_limit() -> None:
    specs = build_requests(50, 100, 50, range_ratio=0.5, seed=1)
    assert all(50 <= s.prompt_len <= 150 and len(s.prompt) == s.prompt_len for s in specs)
    assert all(s.prompt_len + s.output_len <= 1024 for s in specs)
    text = build_requests(3, 10, 5, prompt_format="text")
    assert all(isinstance(s.prompt, str) and len(s.prompt.split()) == 10 for s in text)
    with pytest.raises(ValueError, match="exceeds the context"):
        build_requests(1, 1000, 100)


def test_poisson_gaps_have_the_right_mean() -> None:
    gaps = poisson_delays(random.Random(0), rate=20.0, count=4000)
    assert sum(gaps) / len(gaps) == pytest.approx(0.05, rel=0.1)
    assert poisson_delays(random.Random(0), float("inf"), 3) == [0.0, 0.0, 0.0]


def test_closed_loop_against_live_server(server_url) -> None:
    specs = build_requests(8, 16, 12, seed=2)
    summary, results = asyncio.run(
        run_load(server_url, "tiny", specs, concurrency=4, progress=False)
    )
    assert summary.completed == 8 and summary.failed == 0
    assert all(r.output_tokens == 12 for r in results)
    assert all(len(r.itl) == 11 for r in results)
    assert summary.ttft_ms["p50"] > 0 and summary.output_throughput > 0


def test_open_loop_and_errors_counted(server_url) -> None:
    specs = build_requests(4, 8, 4, seed=3)
    summary, _ = asyncio.run(run_load(server_url, "tiny", specs, request_rate=50.0, progress=False))
    assert summary.completed == 4
    summary, _ = asyncio.run(run_load(server_url, "no-such-model", specs[:2], progress=False))
    assert summary.failed == 2 and list(summary.errors) == [NO_SUCH_MODEL]


def test_cli_writes_json_and_plot(server_url, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "result.json", tmp_path / "plot.png"
    with pytest.raises(SystemExit) as exit_info:
        loadtest_main([
            "--base-url", server_url, "--model", "tiny", "--num-requests", "4",
            "--concurrency", "1,2", "--input-len", "8", "--output-len", "4",
            "--result-json", str(out), "--plot", str(plot), "--no-progress",
        ])  # fmt: skip
    assert exit_info.value.code == 0
    runs = json.loads(out.read_text())
    assert [r["settings"]["concurrency"] for r in runs] == [1, 2]
    assert all(r["summary"]["completed"] == 4 for r in runs)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
