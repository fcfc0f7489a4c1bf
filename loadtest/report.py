"""Print a run's summary, save it as JSON, and plot latency against load as a PNG."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpt2serve.loadtest.stats import Summary


def format_summary(summary: Summary, label: str = "") -> str:
    """Human-readable block in `vllm bench serve`'s order."""
    lines = [
        f"============ Serving Benchmark Result {label}============",
        f"Successful requests:              {summary.completed}",
        f"Failed requests:                  {summary.failed}",
        f"Benchmark duration (s):           {summary.duration_s:.2f}",
        f"Total input tokens:               {summary.total_input_tokens}",
        f"Total generated tokens:           {summary.total_output_tokens}",
        f"Request throughput (req/s):       {summary.request_throughput:.2f}",
        f"Output token throughput (tok/s):  {summary.output_throughput:.2f}",
        f"Total token throughput (tok/s):   {summary.total_token_throughput:.2f}",
    ]
    for name, values in (
        ("TTFT", summary.ttft_ms),
        ("TPOT", summary.tpot_ms),
        ("ITL", summary.itl_ms),
        ("E2E", summary.e2e_ms),
    ):
        lines.append(
            f"{name:<5} ms  mean {values['mean']:9.2f}  p50 {values['p50']:9.2f}  "
            f"p90 {values['p90']:9.2f}  p99 {values['p99']:9.2f}"
        )
    for error, count in summary.errors.items():
        lines.append(f"error x{count}: {error}")
    return "\n".join(lines)


def save_json(path: Path, runs: list[tuple[dict[str, Any], Summary]]) -> None:
    """Every run's settings and summary."""
    payload = [{"settings": settings, "summary": asdict(summary)} for settings, summary in runs]
    path.write_text(json.dumps(payload, indent=2))


def save_plot(path: Path, runs: list[tuple[dict[str, Any], Summary]], load_key: str) -> None:
    """TTFT/ITL percentiles and output throughput against the load axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [settings[load_key] for settings, _ in runs]
    fig, (latency_ax, throughput_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, style in (("ttft_ms", "-o"), ("itl_ms", "-s"), ("e2e_ms", "-^")):
        for q in ("p50", "p99"):
            values = [getattr(summary, metric)[q] for _, summary in runs]
            latency_ax.plot(loads, values, style, label=f"{metric[:-3].upper()} {q}")
    latency_ax.set_xlabel(load_key)
    latency_ax.set_ylabel("latency (ms)")
    latency_ax.set_yscale("log")
    latency_ax.legend(fontsize=7)
    latency_ax.grid(alpha=0.3)
    throughput_ax.plot(loads, [s.output_throughput for _, s in runs], "-o", color="tab:green")
    throughput_ax.set_xlabel(load_key)
    throughput_ax.set_ylabel("output tokens/s")
    throughput_ax.grid(alpha=0.3)
    fig.suptitle("gpt2serve loadtest: latency and throughput vs load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
