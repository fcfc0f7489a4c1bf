"""How often bf16 serving gives fp32's greedy tokens, on the same weights and prompts.

  python -m gpt2serve.benchmarks.dtype_agreement --model /tmp/gpt2-random --prompts 64 --tokens 64

Both runs use the CPU serving path (packed linears, the C++ attention kernel where it builds).
Reported: sequences identical to the end, tokens identical position by position, and how far
sequences run together before they first part (after that they continue different texts, so
later positions say little). Random weights give flat logits and part sooner than a trained
checkpoint would.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from gpt2serve import kernels
from gpt2serve.benchmarks.engine_runs import random_prompt, run_to_completion, tokens
from gpt2serve.model.cpu_linear import optimize_for_cpu
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import load_model
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.builder import configure_cpu_threads
from gpt2serve.server.engine.engine import Engine, EngineConfig


def greedy(
    model_spec: str, dtype: torch.dtype, prompts: list[list[int]], num_tokens: int
) -> list[list[int]]:
    """Greedy continuations of every prompt, all in one batch."""
    model = load_model(model_spec, "cpu", dtype)
    optimize_for_cpu(model)
    engine = Engine(
        model, Tokenizer.from_tiktoken(), EngineConfig(num_blocks=2048, max_num_seqs=64)
    )
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    outputs = run_to_completion(engine, {f"p{i}": (p, params) for i, p in enumerate(prompts)})
    return [tokens(outputs[f"p{i}"]) for i in range(len(prompts))]


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, float]:
    """Identical sequences, identical tokens by position, and the common prefix lengths."""
    prefixes = []
    for a, b in zip(reference, other, strict=True):
        prefixes.append(
            next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        )
    same = sum(
        x == y for a, b in zip(reference, other, strict=True) for x, y in zip(a, b, strict=True)
    )
    total = sum(len(a) for a in reference)
    return {
        "identical_sequences": sum(a == b for a, b in zip(reference, other, strict=True)),
        "identical_tokens_pct": 100 * same / total,
        "mean_common_prefix": statistics.fmean(prefixes),
        "median_common_prefix": statistics.median(prefixes),
    }


def main(argv: list[str] | None = None) -> None:
    """Run fp32 and bf16 and print the agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    args = parser.parse_args(argv)
    configure_cpu_threads(None)
    kernels.use_cpu_attention_kernel()
    prompts = [random_prompt(args.prompt_len, seed=i) for i in range(args.prompts)]
    fp32 = greedy(args.model, torch.float32, prompts, args.tokens)
    bf16 = greedy(args.model, torch.bfloat16, prompts, args.tokens)
    result = agreement(fp32, bf16)
    print(f"{args.model}: {args.prompts} prompts x {args.tokens} greedy tokens, bf16 vs fp32")
    print(f"- sequences identical to the end: {result['identical_sequences']}/{args.prompts}")
    print(f"- tokens identical by position: {result['identical_tokens_pct']:.1f}%")
    print(f"- tokens before the first difference: mean {result['mean_common_prefix']:.1f}, "
          f"median {result['median_common_prefix']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
