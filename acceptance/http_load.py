"""Step `http`: a real server (`python -m gpt2serve`), loaded with `gpt2serve.loadtest` at 1,
64 and 256 concurrent streams: output tok/s, TTFT and inter-token latency percentiles."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

from gpt2serve.acceptance import targets
from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement
from gpt2serve.benchmarks.local_server import free_port, stop, wait_healthy
from gpt2serve.loadtest.runner import run_load
from gpt2serve.loadtest.workload import build_requests

# model, (concurrency, requests) levels, input tokens, output tokens, start-up seconds
SIZES = {
    "full": ("random:gpt2", ((1, 16), (64, 256), (256, 1024)), 128, 128, 180),
    "quick": ("random:gpt2", ((1, 8), (64, 128)), 128, 128, 120),
    "cpu": ("random:tiny", ((1, 2), (4, 8)), 16, 8, 120),
}
MODEL_NAME = "gpt2"


def start_server(model: str, port: int, dry_run: bool) -> subprocess.Popen:
    """The server as a user starts it; its output joins this step's log."""
    command = [sys.executable, "-m", "gpt2serve", "--model", model, "--served-model-name",
               MODEL_NAME, "--port", str(port), "--max-num-seqs", "256",
               "--max-num-batched-tokens", "8192", "--log-level", "warning"]  # fmt: skip
    if dry_run:
        command += ["--device", "cpu", "--num-kv-blocks", "512"]
    return subprocess.Popen(command, stdout=sys.stdout, stderr=sys.stderr)


def measure(
    url: str, concurrency: int, num_requests: int, input_len: int, output_len: int, hold: bool
) -> Measurement:
    """One closed-loop load at `concurrency` streams."""
    specs = build_requests(num_requests, input_len, output_len, seed=concurrency)
    summary, _ = asyncio.run(
        run_load(url, MODEL_NAME, specs, concurrency=concurrency, progress=False)
    )
    ttft, itl = summary.ttft_ms, summary.itl_ms
    value = (f"{summary.output_throughput:,.0f} tok/s; TTFT p50/p99 {ttft['p50']:.0f}/"
             f"{ttft['p99']:.0f} ms; ITL p50/p99 {itl['p50']:.1f}/{itl['p99']:.1f} ms; "
             f"{summary.completed}/{num_requests} ok")  # fmt: skip
    met = None
    target = ""
    if hold and concurrency == 256:
        target = (f">= {targets.HTTP_256_STREAMS_TOK_S:,} tok/s, TTFT p99 <= "
                  f"{targets.HTTP_256_TTFT_P99_MS:.0f} ms")  # fmt: skip
        met = (summary.output_throughput >= targets.HTTP_256_STREAMS_TOK_S
               and ttft["p99"] <= targets.HTTP_256_TTFT_P99_MS and not summary.failed)  # fmt: skip
    return Measurement(
        f"HTTP, {concurrency} concurrent streams x ({input_len} in, {output_len} out)",
        value, target, met,
        {"tok_s": summary.output_throughput, "ttft_p50_ms": ttft["p50"],
         "ttft_p99_ms": ttft["p99"], "itl_p50_ms": itl["p50"], "itl_p99_ms": itl["p99"],
         "failed": summary.failed},
    )  # fmt: skip


def run(ctx: StepContext) -> Iterator[Measurement]:
    """Start, warm up, load at each level, stop."""
    model, levels, input_len, output_len, startup = SIZES[ctx.mode]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port, ctx.dry_run)
    try:
        seconds = wait_healthy(url, server, startup)
        yield Measurement("server start-up (build, KV sizing, graph capture)", f"{seconds:.1f} s")
        warm = build_requests(8, input_len, 4, seed=99)
        asyncio.run(run_load(url, MODEL_NAME, warm, concurrency=8, progress=False))
        for concurrency, num_requests in levels:
            yield measure(url, concurrency, num_requests, input_len, output_len, not ctx.dry_run)
    finally:
        stop(server, grace=30)
