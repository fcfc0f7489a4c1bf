"""Kernel benchmarks on CUDA: `python -m gpt2serve.benchmarks.kernels` prints markdown tables.

Decode attention is memory-bound, so it is reported as achieved GB/s of K/V read against the
device's copy bandwidth; prefill attention as TFLOP/s; fused sampling against a torch sort-based
top-k + top-p draw over GPT-2's 50,257-token vocabulary; the structured-output token bitmask
against its torch reference. The `measure_*` functions return numbers (the acceptance run reads
them); `format_*` turn them into tables. On "cpu" (Triton's interpreter, tiny shapes) everything
runs once and the timings mean nothing: that only exercises the code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt2serve.kernels import reference, reference_sampling

N_HEAD, HEAD_DIM, BLOCK_SIZE, VOCAB = 12, 64, 16, 50257  # gpt2


def time_ms(fn: Callable[[], object], device: str) -> float:
    """Median milliseconds of fn on a GPU; one wall-clock call elsewhere."""
    if device != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbs(device: str = "cuda", nbytes: int = 1 << 30) -> float:
    """Device-to-device copy: bytes read plus bytes written per second."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)  # [nbytes / 2]
    dst = torch.empty_like(src)
    return 2 * nbytes / time_ms(lambda: dst.copy_(src), device) / 1e6


def paged_batch(
    seq_lens: list[int], q_lens: list[int], dtype: torch.dtype, device: str
) -> dict[str, torch.Tensor | int | float]:
    """Random paged cache and metadata for sequences (seq_len, q_len), shuffled pages."""
    blocks = [-(-s // BLOCK_SIZE) for s in seq_lens]
    pages = torch.randperm(sum(blocks), device=device, dtype=torch.int32)  # [num_blocks]
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=device)
    for i, chunk in enumerate(pages.split(blocks)):
        tables[i, : len(chunk)] = chunk
    shape = (sum(blocks), BLOCK_SIZE, N_HEAD, HEAD_DIM)
    starts = torch.tensor([0, *q_lens], device=device).cumsum(0).to(torch.int32)
    return dict(
        query=torch.randn(sum(q_lens), N_HEAD, HEAD_DIM, device=device, dtype=dtype),
        k_cache=torch.randn(shape, device=device, dtype=dtype),
        v_cache=torch.randn(shape, device=device, dtype=dtype),
        block_tables=tables,  # [num_seqs, max_blocks]
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=starts,  # [num_seqs + 1]
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        scale=HEAD_DIM**-0.5,
    )


@dataclass
class DecodeResult:
    """Decode attention over one batch × context."""

    batch: int
    context: int
    splits: int
    us: float
    gbs: float  # K + V bytes read per second
    graph_gbs: float  # with max_seq_len fixed at 1024, as a captured CUDA graph runs it
    reference_us: float


def measure_decode(
    dtype: torch.dtype,
    device: str = "cuda",
    batches: tuple[int, ...] = (1, 32, 256),
    contexts: tuple[int, ...] = (128, 512, 1024),
) -> list[DecodeResult]:
    """Decode attention at gpt2 shapes, eager and with a CUDA graph's max_seq_len."""
    from gpt2serve.kernels.attention import choose_num_splits, paged_attention

    results = []
    for batch in batches:
        for context in contexts:
            args = paged_batch([context] * batch, [1] * batch, dtype, device)
            kv_bytes = 2 * batch * context * N_HEAD * HEAD_DIM * args["query"].element_size()
            triton_ms = time_ms(lambda a=args: paged_attention(**a), device)
            graph_ms = time_ms(lambda a=args: paged_attention(**dict(a, max_seq_len=1024)), device)
            torch_ms = time_ms(lambda a=args: reference.paged_attention(**a), device)
            splits = choose_num_splits(batch, N_HEAD, context, torch.device(device))
            results.append(
                DecodeResult(batch, context, splits, triton_ms * 1e3, kv_bytes / triton_ms / 1e6,
                             kv_bytes / graph_ms / 1e6, torch_ms * 1e3)
            )  # fmt: skip
    return results


@dataclass
class PrefillResult:
    """Varlen prefill attention over num_seqs sequences of one length."""

    num_seqs: int
    length: int
    ms: float
    tflops: float
    reference_ms: float


def measure_prefill(
    dtype: torch.dtype,
    device: str = "cuda",
    shapes: tuple[tuple[int, int], ...] = ((1, 1024), (8, 512), (16, 1024), (64, 128)),
) -> list[PrefillResult]:
    """Varlen prefill TFLOP/s (causal: half the square's multiply-adds)."""
    from gpt2serve.kernels.attention import paged_attention

    results = []
    for num_seqs, length in shapes:
        args = paged_batch([length] * num_seqs, [length] * num_seqs, dtype, device)
        flops = num_seqs * N_HEAD * 2 * length * length * HEAD_DIM  # QK^T and PV, causal half
        triton_ms = time_ms(lambda a=args: paged_attention(**a), device)
        torch_ms = time_ms(lambda a=args: reference.paged_attention(**a), device)
        results.append(
            PrefillResult(num_seqs, length, triton_ms, flops / triton_ms / 1e9, torch_ms)
        )
    return results


def torch_sort_sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    top_k: torch.Tensor,  # [num_seqs] int64; 0 = off
    top_p: torch.Tensor,  # [num_seqs] float32
    uniform: torch.Tensor,  # [num_seqs] float32
) -> torch.Tensor:  # [num_seqs] int64
    """The usual sort-based top-k + top-p draw (one sort, masks, inverse CDF): the baseline."""
    probs = torch.softmax(logits, dim=-1)  # [num_seqs, vocab]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(probs.shape[1], device=probs.device)[None, :]  # [1, vocab]
    k = torch.where(top_k > 0, top_k, probs.shape[1])[:, None]  # [num_seqs, 1]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = (ranks >= k) | (mass_before >= top_p[:, None])  # [num_seqs, vocab]
    cdf = sorted_probs.masked_fill(drop, 0.0).cumsum(dim=-1)  # [num_seqs, vocab]
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).clamp_(max=cdf.shape[1] - 1)
    return order.gather(1, picked).squeeze(1)


@dataclass
class SamplingResult:
    """One sampling case at one batch size."""

    case: str
    batch: int
    fused_us: float
    reference_us: float
    sort_us: float

    @property
    def speedup(self) -> float:
        """How many times faster the fused kernel is than the sort-based baseline."""
        return self.sort_us / self.fused_us


SAMPLING_CASES = {  # name: (temperature, top_k, top_p, min_p)
    "greedy": (0.0, 0, 1.0, 0.0),
    "top-p 0.9": (1.0, 0, 0.9, 0.0),
    "top-k 50 + top-p 0.9": (1.0, 50, 0.9, 0.0),
}


def measure_sampling(
    device: str = "cuda", batches: tuple[int, ...] = (1, 16, 64, 256), vocab: int = VOCAB
) -> list[SamplingResult]:
    """Fused sampling against the sort-based baseline and the torch reference, batch × vocab."""
    from gpt2serve.kernels.sampling import sample

    results = []
    for batch in batches:
        gen = torch.Generator(device=device).manual_seed(batch)
        logits = torch.randn(batch, vocab, device=device, generator=gen) * 4  # [batch, vocab]
        uniform = torch.rand(batch, device=device, generator=gen)  # [batch]
        for name, (temperature, k, p, min_p) in SAMPLING_CASES.items():
            ones = torch.ones(batch, device=device)
            top_k = torch.full((batch,), k, dtype=torch.int32, device=device)
            args = (logits, temperature * ones, top_k, p * ones, min_p * ones, uniform)
            fused_us = time_ms(lambda a=args: sample(*a), device) * 1e3
            reference_us = time_ms(lambda a=args: reference.sample(*a), device) * 1e3
            sort_args = (logits, top_k.long(), p * ones, uniform)
            sort_us = time_ms(lambda a=sort_args: torch_sort_sample(*a), device) * 1e3
            results.append(SamplingResult(name, batch, fused_us, reference_us, sort_us))
    return results


@dataclass
class BitmaskResult:
    """Structured-output token bitmask over one batch of logits."""

    batch: int
    us: float
    reference_us: float


def measure_bitmask(
    device: str = "cuda", batches: tuple[int, ...] = (1, 64, 256), vocab: int = VOCAB
) -> list[BitmaskResult]:
    """The bitmask kernel against the torch reference: every row masked, about half forbidden."""
    from gpt2serve.kernels.bitmask import apply_token_bitmask_triton

    results = []
    for batch in batches:
        logits = torch.randn(batch, vocab, device=device)  # [batch, vocab] float32
        shape = (batch, -(-vocab // 32))
        words = torch.randint(-(2**31), 2**31, shape, device=device)  # [batch, words] int64
        args = (logits, words.to(torch.int32), torch.arange(batch, device=device))
        us = time_ms(lambda a=args: apply_token_bitmask_triton(*a), device) * 1e3
        ref = time_ms(lambda a=args: reference_sampling.apply_token_bitmask(*a), device) * 1e3
        results.append(BitmaskResult(batch, us, ref))
    return results


def format_decode(results: list[DecodeResult], copy_gbs: float) -> list[str]:
    """Markdown rows of `measure_decode`."""
    rows = ["| batch | context | splits | µs | GB/s | % of copy | GB/s (max_seq_len 1024) | "
            "torch reference µs |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        rows.append(f"| {r.batch} | {r.context} | {r.splits} | {r.us:.1f} | {r.gbs:.0f} | "
                    f"{100 * r.gbs / copy_gbs:.0f}% | {r.graph_gbs:.0f} | "
                    f"{r.reference_us:.1f} |")  # fmt: skip
    return rows


def format_prefill(results: list[PrefillResult]) -> list[str]:
    """Markdown rows of `measure_prefill`."""
    rows = ["| sequences × length | ms | TFLOP/s | torch reference ms |", "|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.num_seqs} × {r.length} | {r.ms:.3f} | {r.tflops:.1f} | "
                    f"{r.reference_ms:.3f} |")  # fmt: skip
    return rows


def format_sampling(results: list[SamplingResult]) -> list[str]:
    """Markdown rows of `measure_sampling`."""
    rows = ["| case | batch | fused µs | reference µs | sort-based µs | speed-up vs sort |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        rows.append(f"| {r.case} | {r.batch} | {r.fused_us:.0f} | {r.reference_us:.0f} | "
                    f"{r.sort_us:.0f} | {r.speedup:.1f}x |")  # fmt: skip
    return rows


def format_bitmask(results: list[BitmaskResult]) -> list[str]:
    """Markdown rows of `measure_bitmask`."""
    rows = ["| batch | Triton µs | torch reference µs |", "|---|---|---|"]
    for r in results:
        rows.append(f"| {r.batch} | {r.us:.1f} | {r.reference_us:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the tables; exit 2 without CUDA."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU (none found); nothing was measured.", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    copy_gbs = copy_bandwidth_gbs()
    print(f"# Kernel benchmarks on {torch.cuda.get_device_name()} ({args.dtype})\n")
    print(f"Device copy bandwidth (read + write): {copy_gbs:.0f} GB/s\n")
    print("## Decode attention (gpt2: 12 heads × 64, K+V bytes read / time)\n")
    print("\n".join(format_decode(measure_decode(dtype), copy_gbs)) + "\n")
    print("## Prefill attention\n")
    print("\n".join(format_prefill(measure_prefill(dtype))) + "\n")
    print(f"## Sampling over {VOCAB} tokens\n")
    print("\n".join(format_sampling(measure_sampling())) + "\n")
    print(f"## Structured-output token bitmask over {VOCAB} tokens\n")
    print("\n".join(format_bitmask(measure_bitmask())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
