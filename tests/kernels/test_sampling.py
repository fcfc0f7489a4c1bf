"""Triton fused sampling against the reference: same tokens, right distribution, seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")
from kernels import reference
from kernels.sampling import sample


def random_params(num_seqs: int, vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_seqs, vocab, generator=gen) * 3
    temperature = torch.rand(num_seqs, generator=gen) * 1.5 + 0.2
    temperature[::5] = 0.0  # some greedy rows
    top_k = torch.randint(0, vocab, (num_seqs,), generator=gen, dtype=torch.int32)
    top_k[::3] = 0
    top_p = torch.where(
        torch.rand(num_seqs, generator=gen) < 0.5, 1.0, torch.rand(num_seqs, generator=gen)
    )
    min_p = torch.where(
        torch.rand(num_seqs, generator=gen) < 0.7, 0.0, torch.rand(num_seqs, generator=gen) * 0.3
    )
    uniform = torch.rand(num_seqs, generator=gen)
    return logits, temperature, top_k, top_p.float(), min_p.float(), uniform


@pytest.mark.parametrize(("vocab", "seed"), [(97, 0), (300, 1), (1000, 2)])
def test_same_tokens_as_reference(device, vocab, seed) -> None:
    args = [t.to(device) for t in random_params(24, vocab, seed)]
    expected = reference.sample(*[a.cpu() for a in args])
    actual = sample(*args).cpu()
    assert torch.equal(actual, expected), (actual, expected)


def test_greedy_and_top_k_1_are_argmax(device) -> None:
    logits = torch.randn(8, 500, generator=torch.Generator().manual_seed(3)).to(device)
    ones = torch.ones(8, device=device)
    uniform = torch.rand(8, device=device)
    no_k = torch.zeros(8, dtype=torch.int32, device=device)
    greedy = sample(logits, torch.zeros(8, device=device), no_k, ones, 0 * ones, uniform)
    top1 = sample(
        logits, ones, torch.ones(8, dtype=torch.int32, device=device), ones, 0 * ones, uniform
    )
    assert torch.equal(greedy, logits.argmax(-1)) and torch.equal(top1, greedy)


def test_non_finite_logits_still_give_a_token(device) -> None:
    logits = torch.tensor([[float("inf"), 1.0, float("nan"), 2.0], [0.0, float("-inf"), 1.0, 1.0]])
    args = [
        logits,
        torch.tensor([1.0, 0.5]),
        torch.zeros(2, dtype=torch.int32),
        torch.tensor([0.9, 1.0]),
        torch.zeros(2),
        torch.tensor([0.3, 0.99]),
    ]
    expected = reference.sample(*args)
    assert torch.equal(sample(*[a.to(device) for a in args]).cpu(), expected)


def test_chi_square_against_reference_probabilities(device) -> None:
    # Temperature + min-p: a truncated distribution without the (interpreter-slow) bisections;
    # the thresholds of top-k/top-p are checked token-for-token above.
    vocab, draws = 16, 2000
    gen = torch.Generator().manual_seed(5)
    row = torch.randn(vocab, generator=gen)
    logits = row.expand(draws, vocab).contiguous()
    temperature, min_p = torch.full((draws,), 0.8), torch.full((draws,), 0.1)
    top_k, top_p = torch.zeros(draws, dtype=torch.int32), torch.ones(draws)
    uniform = torch.rand(draws, generator=gen)
    args = (logits, temperature, top_k, top_p, min_p, uniform)
    tokens = sample(*[t.to(device) for t in args]).cpu()
    probs = torch.softmax(row / 0.8, -1)
    expected = torch.where(probs >= 0.1 * probs.max(), probs, torch.zeros_like(probs))
    expected = expected / expected.sum()
    counts = torch.bincount(tokens, minlength=vocab).float()
    assert counts[expected == 0].sum() == 0
    mask = expected > 0
    chi2 = float((((counts - draws * expected) ** 2) / (draws * expected))[mask].sum())
    dof = int(mask.sum()) - 1
    z = 3.09  # p = 0.001, Wilson-Hilferty approximation of the chi-square quantile
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert dof >= 3 and chi2 < critical, (chi2, critical)


def test_seeded_draws_identical_across_batch_positions(device) -> None:
    gen = torch.Generator().manual_seed(6)
    row = torch.randn(1, 700, generator=gen)
    seed_uniform = reference.counter_uniform(torch.tensor([42]), torch.tensor([3]))

    def draw(batch: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        args = (batch, torch.ones(n), torch.zeros(n, dtype=torch.int32), torch.full((n,), 0.95),
                torch.zeros(n), uniform)  # fmt: skip
        return sample(*[a.to(device) for a in args]).cpu()

    alone = int(draw(row, seed_uniform)[0])
    others = torch.randn(6, 700, generator=gen)
    for position in (0, 3, 6):
        batch = torch.cat([others[:position], row, others[position:]])
        uniform = torch.rand(7, generator=gen)
        uniform[position] = seed_uniform[0]
        assert int(draw(batch, uniform)[position]) == alone


@pytest.mark.gpu
def test_gpu_full_vocab_matches_reference() -> None:
    args = [t.cuda() for t in random_params(256, 50257, 7)]
    expected = reference.sample(*[a.cpu() for a in args])
    actual = sample(*args).cpu()
    assert (actual == expected).float().mean() > 0.99
