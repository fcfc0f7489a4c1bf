"""Copies engine state into the Prometheus metrics: each step and at every scrape."""

from __future__ import annotations

import threading

from gpt2serve.server.api.metrics import Metrics
from gpt2serve.server.core.messages import StepStats
from gpt2serve.server.engine.engine import Engine


class EngineStatsReporter:
    """Gauges from engine state; counters from the engine's running totals."""

    def __init__(self, metrics: Metrics, engine: Engine) -> None:
        self.metrics = metrics
        self.engine = engine
        self._lock = threading.Lock()
        self._reported = {"preemptions": 0, "queries": 0, "hits": 0}

    def on_step(self, stats: StepStats) -> None:
        """Engine thread, once per step: per-step histograms."""
        m = self.metrics
        if stats.num_batched_tokens:
            m.labelled(m.iteration_tokens).observe(stats.num_batched_tokens)
        for seconds in stats.queue_times:
            m.labelled(m.request_queue_time).observe(seconds)

    def refresh(self) -> None:
        """Any thread (a scrape): gauges and counter deltas from the engine's current state."""
        m, scheduler, blocks = self.metrics, self.engine.scheduler, self.engine.block_manager
        m.labelled(m.num_requests_running).set(scheduler.num_running)
        m.labelled(m.num_requests_waiting).set(scheduler.num_waiting)
        m.labelled(m.kv_cache_usage_perc).set(blocks.usage)
        totals = {
            "preemptions": scheduler.num_preemptions_total,
            "queries": blocks.prefix_cache_queries,
            "hits": blocks.prefix_cache_hits,
        }
        counters = {
            "preemptions": m.num_preemptions,
            "queries": m.prefix_cache_queries,
            "hits": m.prefix_cache_hits,
        }
        with self._lock:
            for key, total in totals.items():
                delta = total - self._reported[key]
                if delta > 0:
                    m.labelled(counters[key]).inc(delta)
                    self._reported[key] = total
