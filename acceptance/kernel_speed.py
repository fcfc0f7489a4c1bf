"""Step `kernels`: decode attention against this run's copy bandwidth, prefill TFLOP/s, and
fused sampling against a torch sort-based top-k/top-p draw (`gpt2serve.benchmarks.kernels`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gpt2serve.acceptance import targets
from gpt2serve.acceptance.plan import StepContext
from gpt2serve.acceptance.results import Measurement, StepSkipped
from gpt2serve.benchmarks import kernels as bench

SIZES = {  # decode batches, decode contexts, prefill shapes, sampling batches, vocab
    "full": ((1, 32, 256), (128, 512, 1024), ((1, 1024), (16, 1024), (64, 128)), (1, 16, 64, 256),
             bench.VOCAB),
    "quick": ((32, 256), (1024,), ((16, 1024),), (1, 256), bench.VOCAB),
    "cpu": ((2,), (40,), ((2, 20),), (1, 3), 300),
}  # fmt: skip
LONG_CONTEXT = 1024
TARGET_SAMPLING_BATCH = 256


def _decode(copy_gbs: float, results: list[bench.DecodeResult]) -> Iterator[Measurement]:
    for r in results:
        fraction = r.gbs / copy_gbs
        held = r.context == LONG_CONTEXT and r.batch == max(x.batch for x in results)
        yield Measurement(
            f"decode attention, batch {r.batch} x context {r.context} ({r.splits} splits)",
            f"{r.gbs:,.0f} GB/s = {100 * fraction:.0f}% of copy; {r.us:.1f} µs "
            f"(torch {r.reference_us:.1f} µs); graph max_seq_len: {r.graph_gbs:,.0f} GB/s",
            f">= {100 * targets.DECODE_ATTENTION_COPY_FRACTION:.0f}% of copy" if held else "",
            fraction >= targets.DECODE_ATTENTION_COPY_FRACTION if held else None,
            {"gbs": r.gbs, "fraction_of_copy": fraction, "us": r.us},
        )


def _sampling(results: list[bench.SamplingResult]) -> Iterator[Measurement]:
    for r in results:
        held = r.batch == TARGET_SAMPLING_BATCH and r.case != "greedy"
        yield Measurement(
            f"sampling {r.case}, batch {r.batch}",
            f"fused {r.fused_us:.0f} µs vs sort-based {r.sort_us:.0f} µs = {r.speedup:.1f}x "
            f"(torch reference {r.reference_us:.0f} µs)",
            f">= {targets.SAMPLING_SPEEDUP_VS_SORT:.0f}x" if held else "",
            r.speedup >= targets.SAMPLING_SPEEDUP_VS_SORT if held else None,
            {"fused_us": r.fused_us, "sort_us": r.sort_us, "speedup": r.speedup},
        )


def run(ctx: StepContext) -> Iterator[Measurement]:
    """Copy bandwidth first: the decode figures are read against it."""
    batches, contexts, prefill_shapes, sampling_batches, vocab = SIZES[ctx.mode]
    dtype = torch.float32 if ctx.dry_run else torch.float16
    copy_gbs = bench.copy_bandwidth_gbs(ctx.device, 1 << 20 if ctx.dry_run else 1 << 30)
    decode = bench.measure_decode(dtype, ctx.device, batches, contexts)
    prefill = bench.measure_prefill(dtype, ctx.device, prefill_shapes)
    sampling = bench.measure_sampling(ctx.device, sampling_batches, vocab)
    if ctx.dry_run:  # the interpreter ran every kernel; its timings mean nothing
        raise StepSkipped(
            f"needs CUDA for timings; the Triton interpreter ran {len(decode)} decode, "
            f"{len(prefill)} prefill and {len(sampling)} sampling cases at tiny shapes"
        )
    yield Measurement("device copy bandwidth (read + write)", f"{copy_gbs:,.0f} GB/s",
                      numbers={"copy_gbs": copy_gbs})  # fmt: skip
    yield from _decode(copy_gbs, decode)
    for r in prefill:
        yield Measurement(
            f"prefill attention, {r.num_seqs} x {r.length}",
            f"{r.tflops:.1f} TFLOP/s, {r.ms:.3f} ms (torch {r.reference_ms:.3f} ms)",
            numbers={"tflops": r.tflops},
        )
    yield from _sampling(sampling)
