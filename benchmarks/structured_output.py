"""What constrained rows cost a decode step: grammar bitmask fill + apply, against no constraint.

`python -m gpt2serve.benchmarks.structured_output [--model random:gpt2] [--batches 1 16]`:
the serving engine decodes a batch with no constraint, then with half of its rows (at least one)
under a JSON schema, interleaved over `--rounds`; reports the median step time of each, the
overhead, and the milliseconds inside the mask fill + apply (`apply_grammar_masks`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from gpt2serve.benchmarks.engine_runs import random_prompt
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.core.structured_output import StructuredOutput
from gpt2serve.server.engine.builder import build_engine
from gpt2serve.server.engine.engine import Engine
from gpt2serve.server.worker import grammar, sampler

# A JSON array of free strings that cannot be complete for 100,000 items: a constrained row
# keeps decoding (and filling its mask) for every measured step.
SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 100_000}


@dataclass
class OverheadResult:
    """One batch size in one round."""

    batch: int
    constrained_rows: int
    plain_ms: float
    constrained_ms: float
    mask_ms: float  # of constrained_ms, inside the grammar masks

    @property
    def overhead(self) -> float:
        """Constrained step time over plain, minus one."""
        return self.constrained_ms / self.plain_ms - 1


class _MaskTimer:
    """Wraps the sampler's grammar-mask call and adds up its time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.inner = grammar.apply_grammar_masks

    def __call__(self, *args: object) -> None:
        started = time.perf_counter()
        self.inner(*args)
        self.seconds += time.perf_counter() - started


def median_step_ms(engine: Engine, batch: int, constrained: int, steps: int, seed: int) -> float:
    """Start `batch` decodes (`constrained` of them under SCHEMA), time `steps` decode steps."""
    spec = StructuredOutput.json_schema(SCHEMA, "guided_json")
    compiled = engine.grammars.compile_now(spec)
    for row in range(batch):
        fields = {"structured_output": spec, "compiled_grammar": compiled}
        params = SamplingParams(
            max_tokens=steps + 8, temperature=1.0, seed=seed + row, ignore_eos=True,
            **(fields if row < constrained else {}),
        )  # fmt: skip
        engine.add_request(f"r{seed}-{row}", engine.request_limits.check(
            random_prompt(8, seed + row), params))  # fmt: skip
    engine.step()  # the prefills
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - started) * 1e3)
    for row in range(batch):
        engine.abort_request(f"r{seed}-{row}")
    return statistics.median(times)


def measure(engine: Engine, batch: int, steps: int, seed: int) -> OverheadResult:
    """Plain, then half-constrained, at one batch size."""
    constrained = max(1, batch // 2)
    plain = median_step_ms(engine, batch, 0, steps, seed)
    timer = _MaskTimer()
    sampler.apply_grammar_masks = timer
    try:
        with_grammar = median_step_ms(engine, batch, constrained, steps, seed + 1000)
    finally:
        sampler.apply_grammar_masks = timer.inner
    return OverheadResult(batch, constrained, plain, with_grammar, timer.seconds * 1e3 / steps)


def format_table(results: list[OverheadResult]) -> str:
    """Markdown: per batch, each round's plain / constrained step and overhead."""
    lines = ["| batch (constrained) | plain step ms | constrained step ms | overhead | "
             "mask fill + apply ms/step |", "|---|---|---|---|---|"]  # fmt: skip
    for batch in sorted({r.batch for r in results}):
        rows = [r for r in results if r.batch == batch]
        cells = [
            " / ".join(f.format(r) for r in rows)
            for f in (
                "{0.plain_ms:.1f}",
                "{0.constrained_ms:.1f}",
                "{0.overhead:+.1%}",
                "{0.mask_ms:.2f}",
            )
        ]
        lines.append(f"| {batch} ({rows[0].constrained_rows}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the engine once, measure every batch size in every round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    engine, _ = build_engine(ServerSettings(model=args.model, device=args.device, kv_cache_gb=1.0))
    for batch in args.batches:  # warm-up: kernels per row count, the grammar compile
        measure(engine, batch, 4, seed=99_000 + batch)
    results = [
        measure(engine, batch, args.steps, seed=round_ * 10_000 + batch * 100)
        for round_ in range(args.rounds)
        for batch in args.batches
    ]
    print(format_table(results))


if __name__ == "__main__":
    main()
