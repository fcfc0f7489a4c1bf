"""Summary statistics with the definitions `vllm bench serve` uses."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from gpt2serve.loadtest.client import RequestResult

# A summary keeps this many distinct error messages, each up to MAX_ERROR_CHARS long.
MAX_DISTINCT_ERRORS = 20
MAX_ERROR_CHARS = 300
OTHER_ERRORS = "(other errors)"


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, as `vllm bench serve` reports it; 0 for no values."""
    return float(np.percentile(values, q)) if values else 0.0


def describe(values: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99 in milliseconds."""
    ms = [v * 1000 for v in values]
    return {
        "mean": statistics.fmean(ms) if ms else 0.0,
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
    }


@dataclass
class Summary:
    """A whole run's figures."""

    duration_s: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    errors: dict[str, int]


def count_errors(results: list[RequestResult]) -> dict[str, int]:
    """Failed requests by error message (an HTTP error's is the server's), most common first."""
    # Past MAX_DISTINCT_ERRORS messages, the rest are counted together under OTHER_ERRORS.
    counts = Counter(r.error[:MAX_ERROR_CHARS] or "unknown" for r in results if not r.success)
    ranked = counts.most_common()
    errors = dict(ranked[:MAX_DISTINCT_ERRORS])
    rest = sum(count for _, count in ranked[MAX_DISTINCT_ERRORS:])
    if rest:
        errors[OTHER_ERRORS] = rest
    return errors


def summarize(results: list[RequestResult], duration: float) -> Summary:
    """TTFT, TPOT = (latency - ttft) / (output_tokens - 1), ITL over all gaps, E2E."""
    ok = [r for r in results if r.success]
    errors = count_errors(results)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    return Summary(
        duration_s=duration,
        completed=len(ok),
        failed=len(results) - len(ok),
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(ok) / duration if duration else 0.0,
        output_throughput=output_tokens / duration if duration else 0.0,
        total_token_throughput=(input_tokens + output_tokens) / duration if duration else 0.0,
        ttft_ms=describe([r.ttft for r in ok]),
        tpot_ms=describe(tpots),
        itl_ms=describe([gap for r in ok for gap in r.itl]),
        e2e_ms=describe([r.latency for r in ok]),
        errors=errors,
    )
