"""Step `kv-sizing`: the server's own build (KV cache sized by profiling) runs 256 sequences.

The engine is built exactly as `gpt2serve --model random:gpt2 --max-num-seqs 256` builds it
(CUDA: a profiling step, then `--gpu-memory-utilization` 0.9 of the card; CPU dry run:
`--kv-cache-gb`), then 256 requests run at once: none may fail or run out of memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement
from gpt2serve.benchmarks import engine_runs
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.builder import build_engine

SIZES = {  # model, requests, prompt tokens, output tokens
    "full": ("random:gpt2", 256, 128, 32),
    "quick": ("random:gpt2", 256, 64, 16),
    "cpu": ("random:tiny", 256, 8, 4),
}


def run(ctx: StepContext) -> Iterator[Measurement]:
    """Build as the server does, then fill every sequence slot."""
    model, num_requests, prompt_len, output_len = SIZES[ctx.mode]
    settings = ServerSettings(
        model=model, device=ctx.device, max_num_seqs=num_requests, kv_cache_gb=0.05
    )
    engine, _ = build_engine(settings)
    cache = engine.runner.kv_cache  # [n_layer, 2, num_blocks, block_size, n_head, head_dim]
    cache_gib = cache.numel() * cache.element_size() / 2**30
    sizing = "profiling step" if ctx.device == "cuda" else "--kv-cache-gb (CPU)"
    num_graphs = len(engine.runner.decode_runner.graphs) if engine.runner.decode_runner else 0
    yield Measurement(
        f"KV cache sized by {sizing}",
        f"{engine.config.num_blocks - 1:,} blocks = {engine.request_limits.num_cache_tokens:,} "
        f"tokens, {cache_gib:.2f} GiB; {num_graphs} decode graphs captured",
        numbers={"num_blocks": engine.config.num_blocks, "cache_gib": cache_gib,
                 "num_graphs": num_graphs},
    )  # fmt: skip
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    workload = {
        f"r{i}": (engine_runs.random_prompt(prompt_len, seed=i), params)
        for i in range(num_requests)
    }
    outputs = engine_runs.run_to_completion(engine, workload)
    complete = sum(len(engine_runs.tokens(o)) == output_len for o in outputs.values())
    peak = torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else 0.0
    total = torch.cuda.mem_get_info()[1] / 2**30 if ctx.device == "cuda" else 0.0
    memory = f"; peak {peak:.1f} of {total:.1f} GiB" if ctx.device == "cuda" else ""
    yield Measurement(
        f"{num_requests} requests x ({prompt_len} in, {output_len} out) at --max-num-seqs 256",
        f"{complete}/{num_requests} complete{memory}",
        f"{num_requests}/{num_requests}, no OOM",
        complete == num_requests,
        {"complete": complete, "peak_gib": peak},
    )
