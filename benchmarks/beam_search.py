"""Beam search against independent sampled requests: KV blocks held and time, same prompt.

`python -m gpt2serve.benchmarks.beam_search [--model random:gpt2] [--beams 4] [--prompt-len 512]`
runs, interleaved over `--rounds`: one beam search of width k, and k independent sampled
requests of the same prompt and length, each with the prefix cache off (so only beam forking can
share the prompt's blocks). Reports the peak blocks held, wall time and tokens computed per second.
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
class BeamRun:
    """One workload in one round."""

    workload: str
    peak_blocks: int
    seconds: float
    sequence_tokens: int  # decode tokens computed across all sequences (k per step)


def run(
    engine: Engine, workload: dict[str, tuple[list[int], SamplingParams]], name: str
) -> BeamRun:
    """Submit everything, step to the end, track the most blocks held at once."""
    manager = engine.block_manager
    for rid, (prompt, params) in workload.items():
        engine.add_request(rid, engine.request_limits.check(prompt, params))
    started, peak, tokens = time.perf_counter(), 0, 0
    while engine.has_unfinished_requests():
        engine.step()
        tokens += sum(1 for r in engine.scheduler.running if r.num_output_tokens)
        peak = max(peak, manager.num_usable_blocks - manager.num_free_blocks)
    return BeamRun(name, peak, time.perf_counter() - started, tokens)


def workloads(width: int, prompt_len: int, max_tokens: int, seed: int) -> dict[str, dict]:
    """The beam search and its sampled counterpart over one prompt."""
    prompt = random_prompt(prompt_len, seed)
    beams = SamplingParams(max_tokens=max_tokens, use_beam_search=True, best_of=width,
                           n=width, ignore_eos=True)  # fmt: skip
    sampled = SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True)
    return {
        f"beam search k={width}": {f"beam-{seed}": (prompt, beams)},
        f"{width} sampled requests": {f"s{i}-{seed}": (prompt, sampled) for i in range(width)},
    }


def format_table(results: list[BeamRun]) -> str:
    """Markdown: per workload, each round's peak blocks, seconds and sequence tokens/s."""
    lines = ["| workload | peak KV blocks | seconds | sequence tokens/s |", "|---|---|---|---|"]
    for name in dict.fromkeys(r.workload for r in results):
        rows = [r for r in results if r.workload == name]
        blocks = " / ".join(str(r.peak_blocks) for r in rows)
        seconds = " / ".join(f"{r.seconds:.2f}" for r in rows)
        rates = " / ".join(f"{r.sequence_tokens / r.seconds:.0f}" for r in rows)
        lines.append(f"| {name} | {blocks} | {seconds} | {rates} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the engine once (prefix cache off), run both workloads interleaved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = ServerSettings(model=args.model, device=args.device, kv_cache_gb=1.0,
                              enable_prefix_caching=False)  # fmt: skip
    engine, _ = build_engine(settings)
    print(f"block size {engine.config.block_size}; prompt {args.prompt_len} tokens")
    results = []
    for round_ in range(args.rounds):
        for name, workload in workloads(args.beams, args.prompt_len, args.max_tokens,
                                        seed=round_).items():  # fmt: skip
            results.append(run(engine, workload, name))
    print(format_table(results))


if __name__ == "__main__":
    main()
