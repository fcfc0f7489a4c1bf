"""The kernel benchmark runs at tiny sizes on CPU through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from gpt2serve.benchmarks import kernels as bench


def test_bench_runs_at_tiny_sizes() -> None:
    if torch.cuda.is_available():
        pytest.skip("the real benchmark is `python -m gpt2serve.benchmarks.kernels`")
    assert bench.main([]) == 2  # without CUDA it measures nothing
    decode = bench.measure_decode(torch.float32, "cpu", (2,), (40,))
    assert [(r.batch, r.context) for r in decode] == [(2, 40)] and decode[0].gbs > 0
    assert len(bench.format_decode(decode, copy_gbs=1.0)) == 3
    prefill = bench.measure_prefill(torch.float32, "cpu", ((2, 20),))
    assert prefill[0].tflops > 0 and len(bench.format_prefill(prefill)) == 3
    sampling = bench.measure_sampling("cpu", batches=(1, 3), vocab=300)
    assert len(sampling) == 2 * len(bench.SAMPLING_CASES)
    assert all(r.speedup > 0 for r in sampling) and len(bench.format_sampling(sampling)) == 8


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (1, 1.0), (5, 1.0), (0, 0.5), (7, 0.3)])
def test_sort_baseline_draws_only_kept_tokens(top_k: int, top_p: float) -> None:
    """A fair baseline: every draw lies in the top-k and in the top-p nucleus."""
    gen = torch.Generator().manual_seed(top_k)
    logits = torch.randn(256, 200, generator=gen) * 3  # [256, 200]
    uniform = torch.rand(256, generator=gen)  # [256]
    k = torch.full((256,), top_k, dtype=torch.int64)
    drawn = bench.torch_sort_sample(logits, k, torch.full((256,), top_p), uniform)  # [256]
    probs = torch.softmax(logits, dim=-1)  # [256, 200]
    chosen = probs.gather(1, drawn[:, None])  # [256, 1]
    rank = (probs > chosen).sum(dim=1)  # [256]: 0 = the most likely token
    mass_before = torch.where(probs > chosen, probs, 0.0).sum(dim=1)  # [256]
    assert (rank < (top_k or 200)).all()
    assert (mass_before < top_p + 1e-6).all()
    if top_k == 1:
        assert torch.equal(drawn, logits.argmax(dim=-1))
