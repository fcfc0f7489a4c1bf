"""Temperature, top-k, top-p and min-p shape what the sampler draws, checked over many seeds."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from gpt2serve.server.core.request import Request
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.worker.sampler import Sampler

# Eight tokens with probabilities ~ .36 .22 .16 .11 .065 .048 .029 .018 at temperature 1.
BASE_LOGITS = [2.0, 1.5, 1.2, 0.8, 0.3, 0.0, -0.5, -1.0]
NUM_DRAWS = 4000


def draw(num_draws: int = NUM_DRAWS, **params: object) -> list[int]:
    """One token per seed 0..num_draws-1, all rows in one batch over `BASE_LOGITS`."""
    logits = torch.tensor([BASE_LOGITS] * num_draws)  # [num_draws, vocab]
    requests = [
        Request(f"r{seed}", [0], SamplingParams(seed=seed, **params)) for seed in range(num_draws)
    ]
    return Sampler(len(BASE_LOGITS), torch.device("cpu"))(logits, requests).token_ids


def frequencies(tokens: list[int]) -> list[float]:
    counts = Counter(tokens)
    return [counts[t] / len(tokens) for t in range(len(BASE_LOGITS))]


def reference_probs(temperature: float = 1.0) -> list[float]:
    return torch.softmax(torch.tensor(BASE_LOGITS) / temperature, dim=-1).tolist()


def greedy_token() -> int:
    return max(range(len(BASE_LOGITS)), key=lambda t: BASE_LOGITS[t])


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_the_tempered_softmax(temperature: float) -> None:
    observed = frequencies(draw(temperature=temperature))
    # 4000 draws: a standard error below 0.008 per token; 0.03 is ~4 of them.
    assert observed == pytest.approx(reference_probs(temperature), abs=0.03)


def test_temperature_near_zero_is_greedy_and_higher_spreads() -> None:
    assert set(draw(temperature=1e-3)) == {greedy_token()}
    assert draw(temperature=0.0) == [greedy_token()] * NUM_DRAWS
    cold, hot = frequencies(draw(temperature=0.3)), frequencies(draw(temperature=2.0))
    assert cold[greedy_token()] > 0.75 and hot[greedy_token()] < 0.3
    assert sum(f > 0 for f in hot) == len(BASE_LOGITS) > sum(f > 0 for f in cold)


def nucleus(top_p: float) -> set[int]:
    """The smallest highest-probability set whose mass reaches `top_p` (from the reference)."""
    probs = reference_probs()
    ranked = sorted(range(len(probs)), key=lambda t: -probs[t])
    kept: set[int] = set()
    mass = 0.0
    for token in ranked:
        if mass >= top_p:
            break
        kept.add(token)
        mass += probs[token]
    return kept


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9])
def test_top_p_draws_only_and_all_of_the_nucleus(top_p: float) -> None:
    kept = nucleus(top_p)
    assert 0 < len(kept) < len(BASE_LOGITS)
    tokens = draw(top_p=top_p)
    assert set(tokens) == kept
    probs = reference_probs()
    mass = sum(probs[t] for t in kept)
    expected = [probs[t] / mass if t in kept else 0.0 for t in range(len(probs))]
    assert frequencies(tokens) == pytest.approx(expected, abs=0.03)


def test_tiny_top_p_is_greedy_and_full_top_p_reaches_the_tail() -> None:
    assert set(draw(top_p=1e-6)) == {greedy_token()}
    assert set(draw(top_p=1.0)) == set(range(len(BASE_LOGITS)))


@pytest.mark.parametrize("min_p", [0.25, 0.5, 0.9])
def test_min_p_never_draws_below_its_share_of_the_top(min_p: float) -> None:
    probs = reference_probs()
    allowed = {t for t, p in enumerate(probs) if p >= min_p * max(probs)}
    assert len(allowed) < len(probs)
    assert set(draw(min_p=min_p)) == allowed


def test_top_k_draws_only_the_k_most_likely() -> None:
    assert set(draw(top_k=3)) == {0, 1, 2}
    assert set(draw(top_k=1, temperature=2.0)) == {greedy_token()}


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1])
def test_no_seed_draws_a_negligible_token(seed: int) -> None:
    # Token 0 has probability ~1e-13: first in vocabulary order, so a draw of u = 0 hits it.
    logits = torch.tensor([[-30.0, 0.0, 0.5, 0.2]])  # [1, vocab]
    sampler = Sampler(4, torch.device("cpu"))
    for step in range(4):
        request = Request("r", [1], SamplingParams(seed=seed))
        for _ in range(step):
            request.append_output_token(1)
        assert sampler(logits, [request]).token_ids != [0], step
