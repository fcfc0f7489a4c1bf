"""CPU decode attention: the C++ kernel against the torch reference, K+V bytes read per second.

`python -m gpt2serve.benchmarks.cpu_attention [--threads N]`: GPT-2 shapes (12 heads x 64), 12
layers each with its own cache of shuffled pages, so every call reads K/V from DRAM as a decode
step does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt2serve.kernels import cpu_attention, reference

N_HEAD, HEAD_DIM, BLOCK_SIZE, LAYERS = 12, 64, 16, 12


@dataclass
class CpuDecodeResult:
    """One dtype × batch × context."""

    dtype: str
    batch: int
    context: int
    kernel_ms: float
    kernel_gbs: float
    reference_ms: float


def paged_layer(batch: int, context: int, dtype: torch.dtype, seed: int) -> tuple:
    """(query, k_cache, v_cache, block_tables, seq_lens) with every sequence's pages shuffled."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = -(-context // BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq + 1
    pages = torch.randperm(num_blocks - 1, generator=gen) + 1  # block 0 unused, as in the engine
    tables = pages.view(batch, blocks_per_seq).to(torch.int32)  # [batch, blocks_per_seq]
    shape = (num_blocks, BLOCK_SIZE, N_HEAD, HEAD_DIM)
    k_cache = torch.randn(shape, generator=gen).to(dtype)  # [num_blocks, block, H, D]
    v_cache = torch.randn(shape, generator=gen).to(dtype)  # [num_blocks, block, H, D]
    query = torch.randn(batch, N_HEAD, HEAD_DIM, generator=gen).to(dtype)  # [batch, H, D]
    return query, k_cache, v_cache, tables, torch.full((batch,), context, dtype=torch.int32)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def run_all(decode: Callable[..., torch.Tensor], layers: list[tuple]) -> None:
    """One decode step's attention: every layer in turn."""
    for layer in layers:
        decode(*layer, HEAD_DIM**-0.5)


def measure(
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
    shapes: tuple[tuple[int, int], ...] = ((1, 200), (16, 200), (16, 512)),
    repeats: int = 5,
) -> list[CpuDecodeResult]:
    """Both implementations over every layer of one decode step, per dtype and shape."""
    results = []
    for dtype in dtypes:
        for batch, context in shapes:
            layers = [paged_layer(batch, context, dtype, seed) for seed in range(LAYERS)]
            kernel_ms = best_ms(lambda ls=layers: run_all(cpu_attention.decode_attention, ls),
                                repeats)  # fmt: skip
            reference_ms = best_ms(lambda ls=layers: run_all(reference._decode_attention, ls),
                                   repeats)  # fmt: skip
            kv_bytes = LAYERS * 2 * batch * context * N_HEAD * HEAD_DIM * dtype.itemsize
            name = str(dtype).removeprefix("torch.")
            results.append(CpuDecodeResult(name, batch, context, kernel_ms,
                                           kv_bytes / kernel_ms / 1e6, reference_ms))  # fmt: skip
    return results


def format_results(results: list[CpuDecodeResult]) -> list[str]:
    """A markdown table."""
    rows = ["| dtype | batch | context | C++ kernel ms (12 layers) | K+V GB/s | reference ms |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        rows.append(f"| {r.dtype} | {r.batch} | {r.context} | {r.kernel_ms:.2f} | "
                    f"{r.kernel_gbs:.1f} | {r.reference_ms:.2f} |")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 2 where the kernel cannot be built."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if cpu_attention.load() is None:
        print("the C++ kernel could not be built; nothing was measured")
        return 2
    torch.set_num_threads(args.threads)
    print(f"CPU decode attention, {args.threads} thread(s)\n")
    print("\n".join(format_results(measure())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
