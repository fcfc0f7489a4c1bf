"""Where one engine step's milliseconds go, by part of the model, and the GEMMs' bandwidth.

  python -m gpt2serve.benchmarks.profile_step --model random:gpt2 --batch 1 --context 128
  python -m gpt2serve.benchmarks.profile_step --batch 16 --context 128
  python -m gpt2serve.benchmarks.profile_step --prefill 512
  (--ops adds torch.profiler's top operators)

Every module is timed by forward hooks on a wall clock (CPU work is synchronous): the four
linears of a block by name, attention without its linears, the layer norms, the lm_head, the
sampler; "other" is the rest of the step (embeddings, the scheduler, Python between ops, and
GELU and residual adds where they are not fused: on the CPU's packed path `mlp.c_fc` includes
its GELU, and `attn.c_proj` / `mlp.c_proj` their residual adds).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from gpt2serve import kernels
from gpt2serve.benchmarks.engine_runs import random_prompt
from gpt2serve.model.cpu_linear import optimize_for_cpu
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import load_model
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.builder import configure_cpu_threads
from gpt2serve.server.engine.engine import Engine, EngineConfig


class Timer:
    """Wall-clock seconds per label, accumulated over hooked calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._started: dict[int, float] = {}

    def reset(self) -> None:
        """Forget what was timed so far (the steps that set up the batch)."""
        self.seconds.clear()
        self.calls.clear()

    def hook(self, module: nn.Module, label: str) -> None:
        """Time every forward of `module` under `label`."""

        def before(*_: object) -> None:
            self._started[id(module)] = time.perf_counter()

        def after(*_: object) -> None:
            self.seconds[label] += time.perf_counter() - self._started.pop(id(module))
            self.calls[label] += 1

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def wrap(self, owner: object, name: str, label: str) -> None:
        """Time every call of the method `owner.name` under `label`."""
        method: Callable = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        setattr(owner, name, timed)


def instrument(engine: Engine) -> tuple[Timer, dict[str, int]]:
    """Hooks on every part; returns the timer and each linear label's weight bytes per call."""
    timer = Timer()
    weight_bytes: dict[str, int] = {}
    for block in engine.model.transformer.h:
        linears = {"c_attn (qkv)": block.attn.c_attn, "attn.c_proj": block.attn.c_proj,
                   "mlp.c_fc": block.mlp.c_fc, "mlp.c_proj": block.mlp.c_proj}  # fmt: skip
        for label, linear in linears.items():
            timer.hook(linear, label)
            weight_bytes[label] = linear.weight.numel() * linear.weight.element_size()
        timer.hook(block.attn, "attention (with its linears)")
        timer.hook(block.ln_1, "layernorm")
        timer.hook(block.ln_2, "layernorm")
    timer.hook(engine.model.transformer.ln_f, "layernorm")
    timer.wrap(engine.model, "compute_logits", "lm_head")
    weight = engine.model.lm_head_weight
    weight_bytes["lm_head"] = weight.numel() * weight.element_size()
    timer.wrap(engine.runner, "sampler", "sampler")
    return timer, weight_bytes


def report(timer: Timer, weight_bytes: dict[str, int], total_s: float, steps: int) -> list[str]:
    """Markdown rows: ms per step by part, share of the step, GB/s of weights for GEMMs."""
    seconds = dict(timer.seconds)
    linears = ("c_attn (qkv)", "attn.c_proj")
    seconds["attention (core)"] = seconds.pop("attention (with its linears)", 0.0) - sum(
        seconds.get(k, 0.0) for k in linears
    )
    seconds["other (embeddings, GELU, residuals, scheduler, Python)"] = total_s - sum(
        seconds.values()
    )
    rows = ["| part | ms per step | share | weights GB/s |", "|---|---|---|---|"]
    for label, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        gbs = ""
        if label in weight_bytes:
            gbs = f"{weight_bytes[label] * timer.calls[label] / spent / 1e9:.1f}"
        rows.append(
            f"| {label} | {spent * 1e3 / steps:.2f} | {100 * spent / total_s:.0f}% | {gbs} |"
        )
    rows.append(f"| **whole step** | **{total_s * 1e3 / steps:.2f}** | 100% | |")
    return rows


def build(args: argparse.Namespace) -> Engine:
    """The engine as the server builds it on a CPU (threads, packed linears)."""
    configure_cpu_threads(args.threads)
    kernels.use_cpu_attention_kernel(not args.no_cpu_kernel)
    model = load_model(args.model, "cpu", getattr(torch, args.dtype))
    optimize_for_cpu(model)
    config = EngineConfig(num_blocks=2048, max_num_seqs=max(16, args.batch))
    return Engine(model, Tokenizer.from_tiktoken(), config)


def run_steps(
    engine: Engine, args: argparse.Namespace, tag: str, timer: Timer | None = None
) -> tuple[float, int]:
    """Set up the batch, then time the steps to profile; returns (seconds, steps).

    `timer` starts afresh where the timed steps start. Requests left unfinished are aborted,
    so the engine is empty again afterwards.
    """
    try:
        return _timed_steps(engine, args, tag, timer or Timer())
    finally:
        for i in range(max(args.batch, args.steps)):  # every id _timed_steps may have added
            engine.abort_request(f"{tag}{i}")


def _timed_steps(
    engine: Engine, args: argparse.Namespace, tag: str, timer: Timer
) -> tuple[float, int]:
    if args.prefill:
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        prompts = [random_prompt(args.prefill, seed=i) for i in range(args.steps)]
        timer.reset()
        started = time.perf_counter()
        for i, prompt in enumerate(prompts):
            engine.add_request(f"{tag}{i}", engine.request_limits.check(prompt, params))
            engine.step()
        return time.perf_counter() - started, args.steps
    params = SamplingParams(max_tokens=args.steps + 2, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        prompt = random_prompt(args.context, seed=i)
        engine.add_request(f"{tag}{i}", engine.request_limits.check(prompt, params))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running) or \
            engine.scheduler.waiting:  # fmt: skip
        engine.step()  # every prompt in, so each timed step is a pure decode step
    timer.reset()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    return time.perf_counter() - started, args.steps


def main(argv: list[str] | None = None) -> None:
    """Profile and print the table (and torch.profiler's top operators with --ops)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=1, help="decoding sequences")
    parser.add_argument("--context", type=int, default=128, help="prompt length of each")
    parser.add_argument("--prefill", type=int, default=0, help="profile prefills of this length")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="default: every core")
    parser.add_argument("--ops", action="store_true", help="also torch.profiler's top operators")
    parser.add_argument("--no-cpu-kernel", action="store_true", help="torch reference attention")
    args = parser.parse_args(argv)
    engine = build(args)
    run_steps(engine, argparse.Namespace(**{**vars(args), "steps": 3}), "warm")
    timer, weight_bytes = instrument(engine)
    seconds, steps = run_steps(engine, args, "timed", timer)
    what = (
        f"prefill of {args.prefill}"
        if args.prefill
        else f"decode, batch {args.batch}, context ~{args.context}"
    )
    print(
        f"{args.model} {args.dtype}, {what}, {torch.get_num_threads()} thread(s), {steps} steps\n"
    )
    print("\n".join(report(timer, weight_bytes, seconds, steps)))
    if args.ops:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run_steps(engine, args, "profiled")
        print("\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
