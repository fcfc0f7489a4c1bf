"""Steps `engine`, `engine-xl`, `hf-compiled`: the engine offline, beside HF transformers.

`engine`: batch-1 ms/step with CUDA graphs on and off, and 256 x (128 in, 128 out) tok/s, with
HF eager on the same weights and prompts. `engine-xl`: the gpt2-xl shape at batch 1 and 64.
`hf-compiled`: HF with a static cache + torch.compile, in a step of its own because compiling
takes minutes; the report sets it against `engine`'s throughput.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import torch

from gpt2serve.acceptance import targets
from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement, StepSkipped
from gpt2serve.benchmarks import engine as bench
from gpt2serve.benchmarks import engine_runs
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.tokenizer import Tokenizer

# model, requests, input tokens, output tokens, batch-1 steps
SIZES = {
    "full": ("random:gpt2", 256, 128, 128, 64),
    "quick": ("random:gpt2", 256, 128, 128, 32),
    "cpu": ("random:tiny", 8, 16, 8, 4),
}
XL_SIZES = {"full": ("random:gpt2-xl", 64, 128, 128, 32), "cpu": ("random:tiny", 4, 16, 8, 4)}


def _dtype(ctx: StepContext) -> torch.dtype:
    return torch.float32 if ctx.dry_run else torch.float16


def _ours(
    model: GPT2LMHeadModel, prompts: list[list[int]], output_len: int, steps: int, label: str,
    hold: bool,
) -> Iterator[Measurement]:  # fmt: skip
    """Batch-1 with graphs on and off, then the whole batch at once; `hold`: to the targets."""
    tokenizer = Tokenizer.from_tiktoken()
    blocks = len(prompts) * -(-(len(prompts[0]) + output_len) // 16) + 64
    engine = engine_runs.build(model, tokenizer, True, blocks, len(prompts))
    bench.run_engine(engine, prompts[:4], 4)  # warm-up: compiles the kernels for these shapes
    graphs_ms = bench.engine_batch1_ms(engine, prompts[0], steps)
    eager = engine_runs.build(model, tokenizer, False, 256, 4)
    bench.engine_batch1_ms(eager, prompts[0], 2)
    eager_ms = bench.engine_batch1_ms(eager, prompts[0], steps)
    del eager
    yield Measurement(
        f"{label}: batch-1 decode step, CUDA graphs on / off",
        f"{graphs_ms:.3f} / {eager_ms:.3f} ms",
        f"<= {targets.BATCH1_DECODE_MS} ms (graphs on)" if hold else "",
        graphs_ms <= targets.BATCH1_DECODE_MS if hold else None,
        {"batch1_graphs_ms": graphs_ms, "batch1_eager_ms": eager_ms},
    )
    seconds, generated = bench.run_engine(engine, prompts, output_len)
    tok_s = generated / seconds
    held = hold and len(prompts) == 256
    yield Measurement(
        f"{label}: {len(prompts)} x ({len(prompts[0])} in, {output_len} out), offline",
        f"{tok_s:,.0f} tok/s ({generated} tokens in {seconds:.2f} s)",
        f">= {targets.THROUGHPUT_256X128_TOK_S:,} tok/s" if held else "",
        tok_s >= targets.THROUGHPUT_256X128_TOK_S if held else None,
        {"tok_s": tok_s},
    )


def run(ctx: StepContext) -> Iterator[Measurement]:
    """gpt2 (tiny in the dry run), then HF eager on the same weights when transformers is here."""
    name, num, input_len, output_len, steps = SIZES[ctx.mode]
    model = engine_runs.load(name, ctx.device, _dtype(ctx))
    prompts = bench.random_prompts(num, input_len, model.config.vocab_size)
    yield from _ours(model, prompts, output_len, steps, name, hold=not ctx.dry_run)
    if ctx.mode == "quick":
        return
    if importlib.util.find_spec("transformers") is None:
        yield Measurement.skip("HF transformers eager", "transformers is not installed")
        return
    hf = bench.bench_hf(bench.load_hf_copy(model), prompts, output_len, steps)
    yield Measurement(
        "HF transformers eager, same workload",
        f"{hf.tokens_per_second:,.0f} tok/s; batch-1 {hf.batch1_ms_per_step:.2f} ms/step",
        numbers={"hf_eager_tok_s": hf.tokens_per_second, "hf_batch1_ms": hf.batch1_ms_per_step},
    )  # fmt: skip


def run_xl(ctx: StepContext) -> Iterator[Measurement]:
    """The largest GPT-2 shape (the dry run uses tiny: the code path, not the size)."""
    name, num, input_len, output_len, steps = XL_SIZES["cpu" if ctx.dry_run else "full"]
    model = engine_runs.load(name, ctx.device, _dtype(ctx), draw_on_device=True)
    prompts = bench.random_prompts(num, input_len, model.config.vocab_size)
    yield from _ours(model, prompts, output_len, steps, name, hold=False)


def run_hf_compiled(ctx: StepContext) -> Iterator[Measurement]:
    """HF's fastest setup on `engine`'s workload (same seed, weights and prompts)."""
    if importlib.util.find_spec("transformers") is None:
        raise StepSkipped("transformers is not installed")
    name, num, input_len, output_len, steps = SIZES[ctx.mode]
    model = engine_runs.load(name, ctx.device, _dtype(ctx))
    prompts = bench.random_prompts(num, input_len, model.config.vocab_size)
    hf_model = bench.load_hf_copy(model)
    del model
    hf = bench.bench_hf(hf_model, prompts, output_len, steps, compiled=True)
    yield Measurement(
        f"HF static cache + torch.compile, {num} x ({input_len} in, {output_len} out)",
        f"{hf.tokens_per_second:,.0f} tok/s; batch-1 {hf.batch1_ms_per_step:.2f} ms/step",
        numbers={"tok_s": hf.tokens_per_second, "batch1_ms": hf.batch1_ms_per_step},
    )
