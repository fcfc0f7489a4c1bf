"""LayerNorm that runs a few rows on one CPU thread.

ATen's CPU LayerNorm splits its rows over every OpenMP thread, however few rows there are. With
`OMP_WAIT_POLICY=PASSIVE` (what the server sets on CPU) each split wakes a sleeping thread,
which costs ~80 us on a VM: 16 rows of 768 took 88 us on 2 threads and 7-10 us on one, and a
GPT-2 decode step runs 2 * n_layer + 1 of them (docs/BENCHMARKS.md, 2026-12-02).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# Up to here one thread was faster than two (measured 1-2048 rows of 768, fp32 and bf16).
ONE_THREAD_MAX_ROWS = 256


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run torch's CPU ops on the calling thread alone inside the block."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and results) that keeps few CPU rows on one thread."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [num_tokens, n_embd]
        """hidden: [num_tokens, n_embd]."""
        rows = hidden.shape[0] if hidden.dim() > 1 else 1
        if hidden.device.type != "cpu" or rows > ONE_THREAD_MAX_ROWS:
            return super().forward(hidden)
        with one_cpu_thread():
            return super().forward(hidden)
