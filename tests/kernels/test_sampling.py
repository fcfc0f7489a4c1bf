"""Triton fused sampling against the reference: same tokens, right distribution, seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")
from gpt2serve import kernels
from gpt2serve.kernels import reference
from gpt2serve.kernels.sampling import sample, search_rounds

Params = tuple[torch.Tensor, ...]  # logits, temperature, top_k, top_p, min_p, uniform


def random_params(num_seqs: int, vocab: int, seed: int) -> Params:
    """A batch mixing greedy rows and every filter, alone and combined."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_seqs, vocab, generator=gen) * 3  # [num_seqs, vocab]
    temperature = torch.rand(num_seqs, generator=gen) * 1.5 + 0.2  # [num_seqs]
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


def on(device: torch.device, params: Params) -> Params:
    return tuple(t.to(device) for t in params)


@pytest.mark.parametrize(
    ("num_seqs", "vocab", "seed", "ways"),
    [(24, 97, 0, 8), (24, 300, 1, 1), (24, 1000, 2, 16), (12, 5000, 3, 8)],  # 5000: many chunks
)
def test_same_tokens_as_reference(device, num_seqs, vocab, seed, ways) -> None:
    params = random_params(num_seqs, vocab, seed)
    expected = reference.sample(*params)
    actual = sample(*on(device, params), search_ways=ways).cpu()
    assert torch.equal(actual, expected), (actual, expected)


def test_extreme_parameters_match_reference(device) -> None:
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 200, generator=gen) * 4
    logits[1, 7] = logits[1, 9] = logits[1].max() + 1  # a tie for the max: first index wins
    params = (
        logits,
        torch.tensor([1.0, 0.0, 1e-4, 1.0, 1.0, 50.0]),
        torch.tensor([0, 0, 0, 199, 1, 2], dtype=torch.int32),
        torch.tensor([1e-9, 1.0, 0.5, 0.999, 1.0, 0.0]),
        torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
        torch.tensor([0.5, 0.5, 0.999, 0.0, 0.3, 0.99]),
    )
    assert torch.equal(sample(*on(device, params)).cpu(), reference.sample(*params))


def test_greedy_and_top_k_1_are_argmax(device) -> None:
    logits = torch.randn(8, 500, generator=torch.Generator().manual_seed(3)).to(device)
    ones = torch.ones(8, device=device)
    uniform = torch.rand(8, device=device)
    no_k = torch.zeros(8, dtype=torch.int32, device=device)
    greedy = sample(logits, torch.zeros(8, device=device), no_k, ones, 0 * ones, uniform)
    top1 = sample(logits, ones, no_k + 1, ones, 0 * ones, uniform)
    assert torch.equal(greedy, logits.argmax(-1)) and torch.equal(top1, greedy)


def test_non_finite_and_half_precision_logits(device) -> None:
    logits = torch.tensor([[float("inf"), 1.0, float("nan"), 2.0], [0.0, float("-inf"), 1.0, 1.0]])
    params = (
        logits,
        torch.tensor([1.0, 0.5]),
        torch.zeros(2, dtype=torch.int32),
        torch.tensor([0.9, 1.0]),
        torch.zeros(2),
        torch.tensor([0.3, 0.99]),
    )
    assert torch.equal(sample(*on(device, params)).cpu(), reference.sample(*params))
    half = (torch.randn(5, 64, generator=torch.Generator().manual_seed(9)).half(), *params[1:])
    half = (half[0], *(torch.cat([t, t, t[:1]]) for t in half[1:]))
    assert torch.equal(sample(*on(device, half)).cpu(), reference.sample(*half))


def kept_set(row: torch.Tensor, temperature: float, top_k: int, top_p: float,
             min_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Probabilities, nucleus mass-before (sorted) and kept mask of one row, in float64.

    Written out from the definition (top-k, top-p over the renormalised survivors, min-p),
    not through the reference.
    """
    probs = torch.softmax(row.double() / temperature, -1)  # [vocab]
    keep = torch.ones_like(probs, dtype=torch.bool)
    if 0 < top_k < probs.shape[0]:
        keep &= probs >= probs.topk(top_k).values[-1]
    survivors = torch.where(keep, probs, 0.0) / torch.where(keep, probs, 0.0).sum()
    ordered = survivors.sort(descending=True).values  # [vocab]
    mass_before = ordered.cumsum(0) - ordered
    if top_p < 1:
        inside = mass_before < top_p
        inside[0] = True  # the most likely token is always inside
        keep &= survivors >= ordered[inside][-1]
    keep &= probs >= min_p * probs.max()
    return probs, mass_before, keep


def chi_square_critical(dof: int, z: float = 3.09) -> float:
    """Critical value at p = 0.001: scipy's when installed, else Wilson-Hilferty's."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return float(chi2.ppf(0.999, dof))


def test_chi_square_against_the_target_distribution(device) -> None:
    vocab, draws = 16, 20000
    gen = torch.Generator().manual_seed(5)
    row = torch.randn(vocab, generator=gen)  # [vocab]
    full = lambda value, dtype=torch.float32: torch.full((draws,), value, dtype=dtype)
    params = (row.expand(draws, vocab).contiguous(), full(1.2), full(12, torch.int32), full(0.9),
              full(0.17), torch.rand(draws, generator=gen))  # fmt: skip
    tokens = sample(*on(device, params)).cpu()  # [draws]
    assert torch.equal(tokens[:64], reference.sample(*(t[:64] for t in params)))
    probs, _, keep = kept_set(row, 1.2, 12, 0.9, 0.17)  # each filter cuts: 16 -> 12 -> 9 -> 6
    expected = torch.where(keep, probs, 0.0) / torch.where(keep, probs, 0.0).sum()  # [vocab]
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    support = expected > 0
    assert int(support.sum()) >= 4, "the test needs a distribution with some spread"
    chi2 = float(((counts - draws * expected)[support] ** 2 / (draws * expected[support])).sum())
    assert chi2 < chi_square_critical(int(support.sum()) - 1), chi2


def test_seeded_draws_identical_across_batch_positions_and_sizes(device) -> None:
    gen = torch.Generator().manual_seed(6)
    row = torch.randn(1, 700, generator=gen)
    seeded = reference.counter_uniform(torch.tensor([42]), torch.tensor([3]))  # [1]

    def draw(batch: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:  # [num_seqs]
        n = batch.shape[0]
        ones = torch.ones(n)
        params = (batch, ones, torch.zeros(n, dtype=torch.int32), 0.95 * ones, 0 * ones, uniform)
        return sample(*on(device, params)).cpu()

    alone = int(draw(row, seeded)[0])
    others = torch.randn(40, 700, generator=gen)
    for position, size in ((0, 10), (4, 10), (9, 10), (33, 41)):
        batch = torch.cat([others[:position], row, others[position : size - 1]])
        uniform = torch.rand(size, generator=gen)
        uniform[position] = seeded[0]
        assert int(draw(batch, uniform)[position]) == alone


def test_search_rounds_cover_the_unit_interval() -> None:
    for ways in (1, 2, 8, 16):
        assert (ways + 1) ** search_rounds(ways) >= 0x3F800001
        assert (ways + 1) ** (search_rounds(ways) - 1) < 0x3F800001


def test_launcher_rejects_bad_inputs(device) -> None:
    params = on(device, random_params(4, 50, 0))
    with pytest.raises(ValueError, match="top_p"):
        sample(*params[:3], params[3][:2], *params[4:])
    with pytest.raises(ValueError, match="logits"):
        sample(params[0][0], *params[1:])
    with pytest.raises(ValueError, match="power of two"):
        sample(*params, search_ways=3)


def mismatch_is_a_rounding_tie(params: Params, row: int, got: int, eps: float = 1e-5) -> bool:
    """Whether the kernel's token differs from the reference's only by float rounding.

    Either the row's kept set is itself a near tie (a nucleus edge or a min-p cut within
    eps), or the draw sits within eps of an edge of the token's CDF interval.
    """
    logits, temperature, top_k, top_p, min_p, uniform = (t[row].cpu() for t in params)
    if float(temperature) <= 0:
        return False  # greedy rows must match exactly
    probs, mass_before, keep = kept_set(logits, float(temperature), int(top_k), float(top_p),
                                        float(min_p))  # fmt: skip
    if float(top_p) < 1 and bool(((mass_before - float(top_p)).abs() < eps).any()):
        return True
    if float(min_p) > 0 and bool(((probs / probs.max() - float(min_p)).abs() < eps).any()):
        return True
    kept = torch.where(keep, probs, 0.0)
    cdf = kept.cumsum(0) / kept.sum()  # [vocab]
    edges = [float(cdf[got]), float(cdf[got - 1]) if got > 0 else 0.0]
    return bool(keep[got]) and min(abs(edge - float(uniform)) for edge in edges) < eps


@pytest.mark.gpu
def test_gpu_full_vocab_matches_reference() -> None:
    params = random_params(256, 50257, 7)
    expected = reference.sample(*params)
    cuda = on(torch.device("cuda"), params)
    for actual in (kernels.sample(*cuda).cpu(), sample(*cuda, search_ways=1).cpu()):
        rows = (actual != expected).nonzero().flatten().tolist()
        assert len(rows) <= 256 * 0.02, rows
        assert all(mismatch_is_a_rounding_tie(params, r, int(actual[r])) for r in rows), rows
