"""Kernel benchmarks on CUDA: `python -m gpt2serve.benchmarks.kernels` prints markdown tables.

Decode attention is memory-bound, so it is reported as achieved GB/s of K/V read against the
device's copy bandwidth; prefill attention as TFLOP/s; fused sampling against torch's
sort-based top-p at batch 256 over GPT-2's 50,257-token vocabulary.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from gpt2serve.kernels import reference

N_HEAD, HEAD_DIM, BLOCK_SIZE, VOCAB = 12, 64, 16, 50257  # gpt2
DEVICE = "cuda"  # a smoke test runs tiny sizes on "cpu" under TRITON_INTERPRET=1


def _time_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of fn on the GPU (one wall-clock call elsewhere: a smoke test)."""
    if DEVICE != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy: bytes read plus bytes written per second."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=DEVICE)  # [nbytes / 2]
    dst = torch.empty_like(src)
    return 2 * nbytes / _time_ms(lambda: dst.copy_(src)) / 1e6


def _paged_batch(
    seq_lens: list[int], q_lens: list[int], dtype: torch.dtype
) -> dict[str, torch.Tensor | int | float]:
    """Random paged cache and metadata for sequences (seq_len, q_len), shuffled pages."""
    blocks = [-(-s // BLOCK_SIZE) for s in seq_lens]
    pages = torch.randperm(sum(blocks), device=DEVICE, dtype=torch.int32)  # [num_blocks]
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=DEVICE)
    for i, chunk in enumerate(pages.split(blocks)):
        tables[i, : len(chunk)] = chunk
    shape = (sum(blocks), BLOCK_SIZE, N_HEAD, HEAD_DIM)
    starts = torch.tensor([0, *q_lens], device=DEVICE).cumsum(0).to(torch.int32)
    return dict(
        query=torch.randn(sum(q_lens), N_HEAD, HEAD_DIM, device=DEVICE, dtype=dtype),
        k_cache=torch.randn(shape, device=DEVICE, dtype=dtype),
        v_cache=torch.randn(shape, device=DEVICE, dtype=dtype),
        block_tables=tables,  # [num_seqs, max_blocks]
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        query_start_loc=starts,  # [num_seqs + 1]
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        scale=HEAD_DIM**-0.5,
    )


def bench_decode(
    dtype: torch.dtype,
    copy_gbs: float,
    batches: tuple[int, ...] = (1, 32, 256),
    contexts: tuple[int, ...] = (128, 512, 1024),
) -> list[str]:
    """Decode attention GB/s at gpt2 shapes, eager and with a CUDA graph's max_seq_len."""
    from gpt2serve.kernels.attention import choose_num_splits, paged_attention

    rows = ["| batch | context | splits | µs | GB/s | % of copy | GB/s (max_seq_len 1024) | "
            "torch reference µs |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for batch in batches:
        for context in contexts:
            args = _paged_batch([context] * batch, [1] * batch, dtype)
            kv_bytes = 2 * batch * context * N_HEAD * HEAD_DIM * args["query"].element_size()
            triton_ms = _time_ms(lambda a=args: paged_attention(**a))
            graph_ms = _time_ms(lambda a=args: paged_attention(**dict(a, max_seq_len=1024)))
            torch_ms = _time_ms(lambda a=args: reference.paged_attention(**a))
            splits = choose_num_splits(batch, N_HEAD, context, torch.device(DEVICE))
            gbs = kv_bytes / triton_ms / 1e6
            rows.append(f"| {batch} | {context} | {splits} | {triton_ms * 1e3:.1f} | {gbs:.0f} | "
                        f"{100 * gbs / copy_gbs:.0f}% | {kv_bytes / graph_ms / 1e6:.0f} | "
                        f"{torch_ms * 1e3:.1f} |")  # fmt: skip
    return rows


def bench_prefill(
    dtype: torch.dtype,
    shapes: tuple[tuple[int, int], ...] = ((1, 1024), (8, 512), (16, 1024), (64, 128)),
) -> list[str]:
    """Varlen prefill TFLOP/s (causal: half the square's multiply-adds)."""
    from gpt2serve.kernels.attention import paged_attention

    rows = ["| sequences × length | ms | TFLOP/s | torch reference ms |", "|---|---|---|---|"]
    for num_seqs, length in shapes:
        args = _paged_batch([length] * num_seqs, [length] * num_seqs, dtype)
        flops = num_seqs * N_HEAD * 2 * length * length * HEAD_DIM  # QK^T and PV, causal half
        triton_ms = _time_ms(lambda a=args: paged_attention(**a))
        torch_ms = _time_ms(lambda a=args: reference.paged_attention(**a))
        rows.append(f"| {num_seqs} × {length} | {triton_ms:.3f} | {flops / triton_ms / 1e9:.1f} | "
                    f"{torch_ms:.3f} |")  # fmt: skip
    return rows


def torch_top_p(logits: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The usual sort-based top-p draw: sort, cumsum, mask, inverse CDF (a baseline)."""
    probs = torch.softmax(logits, dim=-1)  # [num_seqs, vocab]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    cdf = sorted_probs.cumsum(dim=-1)  # [num_seqs, vocab]
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).clamp_(max=cdf.shape[1] - 1)
    return order.gather(1, picked).squeeze(1)


def bench_sampling(num_seqs: int = 256, vocab: int = VOCAB) -> list[str]:
    """Fused sampling against the sort-based baseline and the reference at batch × 50,257."""
    from gpt2serve.kernels.sampling import sample

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    logits = torch.randn(num_seqs, vocab, device=DEVICE, generator=gen) * 4
    ones = torch.ones(num_seqs, device=DEVICE)
    uniform = torch.rand(num_seqs, device=DEVICE, generator=gen)
    no_k = torch.zeros(num_seqs, dtype=torch.int32, device=DEVICE)
    cases = {
        "greedy": (0 * ones, no_k, ones, 0 * ones),
        "top-p 0.9": (ones, no_k, 0.9 * ones, 0 * ones),
        "top-k 50 + top-p 0.9 + min-p 0.05": (ones, no_k + 50, 0.9 * ones, 0.05 * ones),
    }
    rows = ["| case | fused µs | reference µs | sort-based top-p µs |", "|---|---|---|---|"]
    sort_us = _time_ms(lambda: torch_top_p(logits, 0.9 * ones, uniform)) * 1e3
    for name, (temp, top_k, top_p, min_p) in cases.items():
        args = (logits, temp, top_k, top_p, min_p, uniform)
        fused_us = _time_ms(lambda a=args: sample(*a)) * 1e3
        ref_us = _time_ms(lambda a=args: reference.sample(*a)) * 1e3
        rows.append(f"| {name} | {fused_us:.0f} | {ref_us:.0f} | {sort_us:.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the tables; exit 2 without CUDA."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpt2serve.benchmarks.kernels needs a CUDA GPU (none found); nothing was measured.",
            file=sys.stderr,
        )
        return 2
    dtype = getattr(torch, args.dtype)
    copy_gbs = copy_bandwidth_gbs()
    print(f"# Kernel benchmarks on {torch.cuda.get_device_name()} ({args.dtype})\n")
    print(f"Device copy bandwidth (read + write): {copy_gbs:.0f} GB/s\n")
    print("## Decode attention (gpt2: 12 heads × 64, K+V bytes read / time)\n")
    print("\n".join(bench_decode(dtype, copy_gbs)) + "\n")
    print("## Prefill attention\n")
    print("\n".join(bench_prefill(dtype)) + "\n")
    print(f"## Sampling, batch 256 × {VOCAB}\n")
    print("\n".join(bench_sampling()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
