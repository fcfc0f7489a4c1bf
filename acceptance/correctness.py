"""Step `correctness`: the serving path (Triton + CUDA graphs) against the torch eager path.

Greedy: the same mixed batch through both paths must give the same tokens; where they part,
it must be at a near-tie (the reference's two candidates within `NEAR_TIE_NATS`), each such
place listed. Seeded sampling: each request gives the same tokens alone as among others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from gpt2serve import kernels
from gpt2serve.acceptance import targets
from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement
from gpt2serve.benchmarks import engine_runs
from gpt2serve.benchmarks.engine_runs import Workload
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.core.messages import RequestOutput
from gpt2serve.server.core.sampling_params import SamplingParams

SIZES = {  # model, greedy requests, tokens each, seeded requests, other requests, sampled tokens
    "full": ("random:gpt2", 32, 64, 8, 24, 48),
    "quick": ("random:gpt2", 16, 32, 4, 12, 32),
    "cpu": ("random:tiny", 8, 12, 3, 5, 10),
}


def greedy_workload(num_requests: int, max_tokens: int) -> Workload:
    """Mixed prompt lengths; plain greedy, and greedy with each penalty kind and logit bias."""
    workload = {}
    for i in range(num_requests):
        extra: dict = [
            {},
            {"repetition_penalty": 1.3},
            {"presence_penalty": 0.5, "frequency_penalty": 0.3},
            {"logit_bias": {50: 2.0, 1000 + i: -5.0}},
        ][i % 4]
        params = SamplingParams(
            max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=5, **extra
        )
        workload[f"g{i}"] = (engine_runs.random_prompt(3 + (i * 37) % 300, seed=i), params)
    return workload


@dataclass
class Parity:
    """How two runs of the same greedy workload compare."""

    identical: int = 0
    near_ties: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def compare(
    fast: dict[str, list[RequestOutput]], reference: dict[str, list[RequestOutput]], tie: float
) -> Parity:
    """Identical, or diverging first where the reference's two candidates were `tie` apart."""
    parity = Parity()
    for request_id, ref_outputs in reference.items():
        ours, theirs = engine_runs.tokens(fast[request_id]), engine_runs.tokens(ref_outputs)
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
        if at is None:
            parity.identical += 1
            continue
        entry = engine_runs.logprobs(ref_outputs)[at]  # the reference's view at the divergence
        alternatives = dict(entry.top)
        gap = entry.logprob - alternatives[ours[at]] if ours[at] in alternatives else None
        where = f"{request_id}@{at}: {theirs[at]} vs {ours[at]}"
        if gap is not None and abs(gap) <= tie:
            parity.near_ties.append(f"{where} ({abs(gap):.1e} nats)")
        else:
            shown = "not in the reference's top 5" if gap is None else f"{abs(gap):.3g} nats"
            parity.mismatches.append(f"{where} ({shown})")
    return parity


def greedy_parity(
    model: GPT2LMHeadModel, tokenizer: Tokenizer, dtype_name: str, sizes: tuple
) -> Measurement:
    """The fast path and the reference path on one mixed greedy batch."""
    _, num_requests, max_tokens = sizes[:3]
    workload = greedy_workload(num_requests, max_tokens)
    fast = engine_runs.build(model, tokenizer, True, 1024, num_requests)
    fast_outputs = engine_runs.run_to_completion(fast, workload)
    del fast
    kernels.disable_triton()  # the reference: torch kernels, no graphs
    try:
        slow = engine_runs.build(model, tokenizer, False, 1024, num_requests)
        slow_outputs = engine_runs.run_to_completion(slow, workload)
    finally:
        kernels.disable_triton(False)
    tie = targets.NEAR_TIE_NATS[dtype_name]
    parity = compare(fast_outputs, slow_outputs, tie)
    value = f"{parity.identical}/{num_requests} identical"
    if parity.near_ties:
        value += f"; near-ties: {', '.join(parity.near_ties)}"
    if parity.mismatches:
        value += f"; MISMATCHES: {', '.join(parity.mismatches)}"
    return Measurement(
        f"greedy {dtype_name}: serving path vs torch eager, {num_requests} mixed x {max_tokens}",
        value,
        f"identical, or parting only at a near-tie <= {tie:g} nats",
        not parity.mismatches,
        {"identical": parity.identical, "near_ties": len(parity.near_ties),
         "mismatches": len(parity.mismatches)},
    )  # fmt: skip


def seeded_alone_vs_batched(
    model: GPT2LMHeadModel, tokenizer: Tokenizer, sizes: tuple
) -> Measurement:
    """Seeded sampled requests: the same tokens alone as in a batch with others."""
    _, _, _, num_seeded, num_others, max_tokens = sizes
    seeded = {
        f"s{i}": (
            engine_runs.random_prompt(4 + 29 * i, seed=100 + i),
            SamplingParams(
                max_tokens=max_tokens,
                temperature=0.9,
                top_p=0.95,
                top_k=50,
                seed=1000 + i,
                ignore_eos=True,
            ),
        )
        for i in range(num_seeded)
    }
    others = {
        f"o{i}": (
            engine_runs.random_prompt(7 + 41 * i, seed=200 + i),
            SamplingParams(max_tokens=max_tokens, temperature=1.0, min_p=0.02, ignore_eos=True),
        )
        for i in range(num_others)
    }
    engine = engine_runs.build(model, tokenizer, True, 1024, num_seeded + num_others)
    alone = {
        rid: engine_runs.run_to_completion(engine, {rid: job})[rid] for rid, job in seeded.items()
    }
    together = engine_runs.run_to_completion(engine, {**seeded, **others})
    same = [
        rid for rid in seeded if engine_runs.tokens(alone[rid]) == engine_runs.tokens(together[rid])
    ]
    return Measurement(
        f"seeded sampling, alone vs among {num_others} others (fp32, serving path)",
        f"{len(same)}/{num_seeded} identical",
        f"{num_seeded}/{num_seeded}",
        len(same) == num_seeded,
        {"identical": len(same)},
    )


def run(ctx: StepContext) -> Iterator[Measurement]:
    """fp32 parity, seeded sampling, then fp16 parity (CUDA only)."""
    sizes = SIZES[ctx.mode]
    tokenizer = Tokenizer.from_tiktoken()
    model = engine_runs.load(sizes[0], ctx.device, torch.float32)
    yield greedy_parity(model, tokenizer, "float32", sizes)
    yield seeded_alone_vs_batched(model, tokenizer, sizes)
    if ctx.dry_run:
        yield Measurement.skip("greedy float16: serving path vs torch eager", "fp16 runs on CUDA")
        return
    del model
    yield greedy_parity(
        engine_runs.load(sizes[0], ctx.device, torch.float16), tokenizer, "float16", sizes
    )
