"""How long running streams stall while a long prompt is prefilled, per chunked-prefill budget.

`python -m gpt2serve.benchmarks.prefill_stall [--model random:gpt2] [--budgets 128 256 512]`:
the serving engine (as `gpt2serve --model ...` builds it on this machine), `--streams` decoding
requests, then one `--prompt-len` prompt arrives. The longest step until that prompt's first
token is the worst gap a running stream sees between two tokens; its TTFT is the price of
chunking. Budgets are interleaved over `--rounds` so the VM's speed drift hits all alike.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from gpt2serve.benchmarks.engine_runs import random_prompt
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.builder import build_engine
from gpt2serve.server.engine.engine import Engine


@dataclass
class StallResult:
    """One budget in one round."""

    budget: int
    worst_gap_ms: float
    decode_step_ms: float
    long_prompt_ttft_ms: float


def measure(engine: Engine, budget: int, streams: int, prompt_len: int, seed: int) -> StallResult:
    """Start `streams` decodes, add the long prompt, time every step until its first token."""
    engine.scheduler.max_num_batched_tokens = budget
    params = SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True)
    for index in range(streams):
        request = engine.request_limits.check(random_prompt(16, seed + index), params)
        engine.add_request(f"stream-{seed}-{index}", request)
    decode_ms = [_timed_step(engine)[0] for _ in range(8)][2:]
    long_id = f"long-{seed}"
    long_params = SamplingParams(temperature=0.0, max_tokens=1)
    long_prompt = random_prompt(prompt_len, seed)
    engine.add_request(long_id, engine.request_limits.check(long_prompt, long_params))
    started, worst = time.perf_counter(), 0.0
    while True:
        step_ms, outputs = _timed_step(engine)
        worst = max(worst, step_ms)
        if any(o.request_id == long_id for o in outputs):
            break
    ttft = (time.perf_counter() - started) * 1e3
    for index in range(streams):
        engine.abort_request(f"stream-{seed}-{index}")
    return StallResult(budget, worst, sorted(decode_ms)[len(decode_ms) // 2], ttft)


def _timed_step(engine: Engine) -> tuple[float, list]:
    started = time.perf_counter()
    outputs = engine.step()
    return (time.perf_counter() - started) * 1e3, outputs


def format_table(results: list[StallResult]) -> str:
    """Markdown: the worst gap and TTFT per budget, each round's numbers."""
    lines = [
        "| budget (tokens) | worst stream gap ms | decode step ms | long prompt TTFT ms |",
        "|---|---|---|---|",
    ]
    for budget in sorted({r.budget for r in results}):
        rows = [r for r in results if r.budget == budget]
        gaps = " / ".join(f"{r.worst_gap_ms:.0f}" for r in rows)
        steps = " / ".join(f"{r.decode_step_ms:.0f}" for r in rows)
        ttfts = " / ".join(f"{r.long_prompt_ttft_ms:.0f}" for r in rows)
        lines.append(f"| {budget} | {gaps} | {steps} | {ttfts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the engine once, run every budget interleaved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = ServerSettings(model=args.model, dtype=args.dtype, device="cpu", kv_cache_gb=1.0)
    engine, _ = build_engine(settings)
    print(f"default budget on this machine: {engine.scheduler.max_num_batched_tokens}")
    for budget in args.budgets:  # warm-up: oneDNN builds kernels per row count, once each
        measure(engine, budget, args.streams, args.prompt_len, seed=999 + budget)
    results = [
        measure(engine, budget, args.streams, args.prompt_len, seed=round_ * 100 + i * 10)
        for round_ in range(args.rounds)
        for i, budget in enumerate(args.budgets)
    ]
    print(format_table(results))


if __name__ == "__main__":
    main()
