"""The kernel benchmark runs at tiny sizes on CPU through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from gpt2serve.benchmarks import kernels as bench


def test_bench_runs_at_tiny_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("the real benchmark is `python -m gpt2serve.benchmarks.kernels`")
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    assert bench.main([]) == 2  # without CUDA it measures nothing
    assert len(bench.bench_decode(torch.float32, 1.0, (2,), (40,))) == 3
    assert len(bench.bench_prefill(torch.float32, ((2, 20),))) == 3
    assert len(bench.bench_sampling(num_seqs=4, vocab=300)) == 5
