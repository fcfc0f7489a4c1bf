"""Prometheus metrics with vLLM's names (prefix `gpt2serve_`); its buckets, refined where coarse."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM v1's boundaries (vllm/v1/metrics/loggers.py), so its dashboards translate; where they
# cannot resolve what a GPT-2 server sees, finer ones are added below vLLM's (a superset, so
# any `le` a vLLM dashboard names still exists).
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
# vLLM's start at 10 ms; a GPT-2 decode step takes a few ms, which all fell in the first bucket.
ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]  # fmt: skip
# vLLM's start at 0.3 s; a short GPT-2 request ends in tens of ms.
E2E_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0,
               15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
               7680.0]  # fmt: skip
# Own boundaries: an idle server schedules a request within ~0.1 ms, and vLLM's 0.3 s first
# bucket made every quantile read 0.15-0.3 s; a long queue still resolves to minutes.
QUEUE_TIME_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]  # fmt: skip
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
FINISHED_REASONS = ("stop", "length", "abort")


def one_two_five_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    buckets, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class Metrics:
    """All server metrics in their own registry, labelled with the served model name."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"gpt2serve_{name}", doc, labels, registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"gpt2serve_{name}", doc, [*labels, *extra], registry=r)

        def histogram(name: str, doc: str, buckets: list[float]) -> Histogram:
            return Histogram(f"gpt2serve_{name}", doc, labels, buckets=buckets, registry=r)

        self.num_requests_running = gauge("num_requests_running", "Requests in the running batch.")
        self.num_requests_waiting = gauge(
            "num_requests_waiting", "Requests waiting to be scheduled."
        )
        self.kv_cache_usage_perc = gauge(
            "kv_cache_usage_perc", "Fraction of KV blocks in use (0-1)."
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.request_success = counter(
            "request_success", "Finished requests by finish reason.", ("finished_reason",)
        )
        self.num_preemptions = counter("num_preemptions", "Requests preempted for KV space.")
        self.prefix_cache_queries = counter("prefix_cache_queries", "Prefix-cache lookups, tokens.")
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prefix-cache hits, tokens.")
        self.request_errors = counter(
            "request_errors", "Requests answered with an error.", ("code",)
        )
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Time between tokens of one choice.", ITL_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS
        )
        self.request_queue_time = histogram(
            "request_queue_time_seconds",
            "Time from arrival to first scheduling.",
            QUEUE_TIME_BUCKETS,
        )
        token_buckets = one_two_five_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "request_prompt_tokens", "Prompt tokens per request.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "request_generation_tokens", "Generated tokens per request.", token_buckets
        )
        self.iteration_tokens = histogram(
            "iteration_tokens_total", "Tokens per engine step.", ITERATION_TOKEN_BUCKETS
        )
        self._create_children()

    def _create_children(self) -> None:
        """Export every series from the start (at 0), as vLLM does, so dashboards see them."""
        for metric in vars(self).values():
            if not isinstance(metric, (Gauge, Counter, Histogram)):
                continue
            if metric is self.request_success:
                for reason in FINISHED_REASONS:
                    self.labelled(metric, finished_reason=reason)
            elif metric is not self.request_errors:  # its codes appear as they happen
                self.labelled(metric)

    def labelled(self, metric: Counter | Gauge | Histogram, **extra: str) -> Any:
        """The child of `metric` for this model (and any extra labels)."""
        return metric.labels(model_name=self.model_name, **extra)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
