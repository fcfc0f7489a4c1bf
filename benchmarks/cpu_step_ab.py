"""CPU decode steps with one change to the model's CPU route switched on or off, interleaved.

  python -m gpt2serve.benchmarks.cpu_step_ab --change fused-epilogues --rounds 4
  OMP_WAIT_POLICY=PASSIVE python -m gpt2serve.benchmarks.cpu_step_ab --change one-thread-layer-norm

One engine per dtype and batch; "before" and "after" alternate every round (A/B/A/B) on the same
engine and batch, because this VM's speed drifts over minutes. The server sets
`OMP_WAIT_POLICY=PASSIVE` before torch loads; set it in the environment to measure as it runs.

- fused-epilogues: before = the linear in oneDNN, then GELU and the residual add as separate
  torch ops; after = both inside the oneDNN call.
- one-thread-layer-norm: before = LayerNorm over every thread; after = few rows on one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Iterator

import torch
from torch import nn

from gpt2serve.benchmarks.profile_step import build, run_steps
from gpt2serve.model import cpu_linear
from gpt2serve.model.layer_norm import LayerNorm


@contextlib.contextmanager
def unfused_epilogues() -> Iterator[None]:
    """CpuLinear runs its epilogues as separate torch ops inside this block."""
    fused_forward = cpu_linear.CpuLinear.forward

    def forward(
        self: cpu_linear.CpuLinear,
        x: torch.Tensor,  # [rows, in_features]
        gelu: bool = False,
        residual: torch.Tensor | None = None,  # [rows, out_features]
    ) -> torch.Tensor:  # [rows, out_features]
        return cpu_linear.unfused_epilogues(fused_forward(self, x), gelu, residual)

    cpu_linear.CpuLinear.forward = forward
    try:
        yield
    finally:
        cpu_linear.CpuLinear.forward = fused_forward


@contextlib.contextmanager
def layer_norm_on_every_thread() -> Iterator[None]:
    """LayerNorm runs as plain `nn.LayerNorm` inside this block."""
    one_thread_forward = LayerNorm.forward
    LayerNorm.forward = nn.LayerNorm.forward
    try:
        yield
    finally:
        LayerNorm.forward = one_thread_forward


# --change -> a context manager under which the model runs as it did before the change.
BEFORE: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "fused-epilogues": unfused_epilogues,
    "one-thread-layer-norm": layer_norm_on_every_thread,
}


def main(argv: list[str] | None = None) -> None:
    """Print ms per decode step, median over rounds, for each dtype and batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--change", choices=sorted(BEFORE), required=True)
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print(f"{args.change}, {args.rounds} rounds, median ms per decode step\n")
    print("| dtype | batch | before ms/step | after ms/step | after / before |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes:
        for batch in args.batches:
            run = argparse.Namespace(model=args.model, dtype=dtype, batch=batch, prefill=0,
                                     context=args.context, steps=args.steps, threads=args.threads,
                                     no_cpu_kernel=False)  # fmt: skip
            engine = build(run)
            run_steps(engine, argparse.Namespace(**{**vars(run), "steps": 3}), "warm")
            times: dict[str, list[float]] = {"before": [], "after": []}
            for round_index in range(args.rounds):
                with BEFORE[args.change]():
                    seconds, steps = run_steps(engine, run, f"b{round_index}-")
                times["before"].append(seconds / steps * 1e3)
                seconds, steps = run_steps(engine, run, f"a{round_index}-")
                times["after"].append(seconds / steps * 1e3)
            before, after = (statistics.median(times[k]) for k in ("before", "after"))
            print(f"| {dtype} | {batch} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
