"""Kernel benchmark on CUDA: decode attention GB/s vs copy bandwidth, prefill TFLOP/s, sampling.

python -m kernels.bench            (needs a CUDA GPU; prints markdown tables)
"""

from __future__ import annotations

import functools
import sys

import torch


def _time_ms(fn, warmup: int = 5, iters: int = 50) -> float:
    """Median milliseconds of `fn()` with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), iters=20)
    return 2 * src.numel() / (ms / 1e3) / 1e9


def _paged_inputs(batch: int, context: int, q_len: int, n_head=12, head_dim=64, block_size=16):
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq + 1
    k_cache = torch.randn(
        num_blocks, block_size, n_head, head_dim, device="cuda", dtype=torch.float16
    )
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(num_blocks - 1, device="cuda") + 1
    block_tables = perm.view(batch, blocks_per_seq).to(torch.int32)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    starts = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * q_len
    query = torch.randn(batch * q_len, n_head, head_dim, device="cuda", dtype=torch.float16)
    return query, k_cache, v_cache, block_tables, seq_lens, starts


def bench_decode(copy_gbs: float) -> list[str]:
    """Achieved bandwidth of decode attention (K and V bytes read) against the copy figure."""
    from kernels.attention import paged_attention

    rows = ["| batch | context | ms | GB/s | % of copy |", "|---|---|---|---|---|"]
    for batch in (1, 32, 256):
        for context in (128, 512, 1024):
            inputs = _paged_inputs(batch, context, 1)
            ms = _time_ms(functools.partial(paged_attention, *inputs, 1, context, 0.125))
            bytes_read = 2 * batch * context * 12 * 64 * 2
            gbs = bytes_read / (ms / 1e3) / 1e9
            rows.append(
                f"| {batch} | {context} | {ms:.3f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% |"
            )
    return rows


def bench_prefill() -> list[str]:
    """Causal prefill TFLOP/s (4 * q * k * d per head, halved for causality)."""
    from kernels.attention import paged_attention

    rows = ["| batch x len | ms | TFLOP/s |", "|---|---|---|"]
    for batch, length in ((1, 1024), (8, 512), (32, 128)):
        inputs = _paged_inputs(batch, length, length)
        ms = _time_ms(functools.partial(paged_attention, *inputs, length, length, 0.125))
        flops = batch * 12 * 4 * length * length * 64 / 2
        rows.append(f"| {batch} x {length} | {ms:.3f} | {flops / (ms / 1e3) / 1e12:.1f} |")
    return rows


def torch_top_p(logits: torch.Tensor, top_p: float, uniform: torch.Tensor) -> torch.Tensor:
    """The usual sort-based top-p sampler, for comparison."""
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    cdf = sorted_probs.cumsum(-1)
    picked = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:]).clamp(max=logits.shape[1] - 1)
    return order.gather(1, picked).squeeze(1)


def bench_sampling() -> list[str]:
    """Fused sampling vs torch sort-based top-p at batch 256 x 50257."""
    from kernels.sampling import sample

    batch, vocab = 256, 50257
    logits = torch.randn(batch, vocab, device="cuda") * 3
    ones = torch.ones(batch, device="cuda")
    uniform = torch.rand(batch, device="cuda")
    no_k = torch.zeros(batch, dtype=torch.int32, device="cuda")
    top_p = torch.full((batch,), 0.9, device="cuda")
    fused = _time_ms(lambda: sample(logits, ones, no_k, top_p, 0 * ones, uniform))
    baseline = _time_ms(lambda: torch_top_p(logits, 0.9, uniform))
    return [
        "| sampler (batch 256, top_p 0.9) | ms |",
        "|---|---|",
        f"| torch sort-based | {baseline:.3f} |",
        f"| gpt2serve fused | {fused:.3f} ({baseline / fused:.1f}x) |",
    ]


def main() -> None:
    """Run all kernel benchmarks and print markdown."""
    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU", file=sys.stderr)
        sys.exit(2)
    print(f"device: {torch.cuda.get_device_name()}")
    copy_gbs = copy_bandwidth_gbs()
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s\n")
    for table in (bench_decode(copy_gbs), bench_prefill(), bench_sampling()):
        print("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
