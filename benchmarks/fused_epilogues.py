"""CPU decode steps with the GELU and residual adds fused into oneDNN's linears, or not.

  python -m gpt2serve.benchmarks.fused_epilogues --model random:gpt2 --rounds 4

One engine per dtype; the two variants alternate every round (A/B/A/B) on the same engine and
batch, because this VM's speed drifts over minutes. "unfused" is the previous route: the linear
in oneDNN, then GELU and the residual add as separate torch ops.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gpt2serve.benchmarks.profile_step import build, run_steps
from gpt2serve.model import cpu_linear


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """CpuLinear runs its epilogues as separate torch ops inside this block."""
    fused_forward = cpu_linear.CpuLinear.forward

    def forward(
        self: cpu_linear.CpuLinear,
        x: torch.Tensor,  # [rows, in_features]
        gelu: bool = False,
        residual: torch.Tensor | None = None,  # [rows, out_features]
    ) -> torch.Tensor:  # [rows, out_features]
        out = fused_forward(self, x)
        out = F.gelu(out, approximate="tanh") if gelu else out
        return out if residual is None else residual + out

    cpu_linear.CpuLinear.forward = forward
    try:
        yield
    finally:
        cpu_linear.CpuLinear.forward = fused_forward


def main(argv: list[str] | None = None) -> None:
    """Print ms per decode step, median over rounds, for each dtype and batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print("| dtype | batch | unfused ms/step | fused ms/step | fused / unfused |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes:
        for batch in args.batches:
            run = argparse.Namespace(model=args.model, dtype=dtype, batch=batch, prefill=0,
                                     context=args.context, steps=args.steps, threads=args.threads,
                                     no_cpu_kernel=False)  # fmt: skip
            engine = build(run)
            run_steps(engine, argparse.Namespace(**{**vars(run), "steps": 3}), "warm")
            times: dict[str, list[float]] = {"unfused": [], "fused": []}
            for round_index in range(args.rounds):
                with unfused():
                    seconds, steps = run_steps(engine, run, f"u{round_index}-")
                times["unfused"].append(seconds / steps * 1e3)
                seconds, steps = run_steps(engine, run, f"f{round_index}-")
                times["fused"].append(seconds / steps * 1e3)
            before, after = (statistics.median(times[k]) for k in ("unfused", "fused"))
            print(f"| {dtype} | {batch} | {before:.2f} | {after:.2f} | {after / before:.2f} |")
            del engine


if __name__ == "__main__":
    main()
