"""Each sampling control has a visible effect through the engine."""

from __future__ import annotations

import itertools

import pytest

from server.request import SamplingParams
from support.engine_driver import random_prompt, run_to_completion, tokens_of

EOS = 50256


def generate(engine, prompt, **params) -> list[int]:
    outputs = run_to_completion(engine, {"x": (prompt, SamplingParams(**params))})["x"]
    return tokens_of(outputs)


def test_top_k_1_equals_greedy(make_engine) -> None:
    prompt = random_prompt(12, seed=1)
    greedy = generate(make_engine(), prompt, max_tokens=16, temperature=0.0, ignore_eos=True)
    top1 = generate(make_engine(), prompt, max_tokens=16, temperature=1.3, top_k=1, ignore_eos=True)
    assert greedy == top1


def test_no_repeat_ngram_never_repeats_a_bigram(make_engine) -> None:
    prompt = random_prompt(3, seed=2)
    free = generate(make_engine(), prompt, max_tokens=60, temperature=0.0, ignore_eos=True)
    sequence = prompt + free
    assert len(set(itertools.pairwise(sequence))) < len(sequence) - 1  # greedy alone loops
    banned = generate(
        make_engine(),
        prompt,
        max_tokens=60,
        temperature=0.0,
        ignore_eos=True,
        no_repeat_ngram_size=2,
    )
    sequence = prompt + banned
    bigrams = list(itertools.pairwise(sequence))
    assert len(bigrams) == len(set(bigrams))


def test_logit_bias_forces_a_token(make_engine) -> None:
    tokens = generate(make_engine(), random_prompt(5, 3), max_tokens=6, logit_bias={1234: 100.0})
    assert tokens == [1234] * 6


def test_min_tokens_suppresses_eos(make_engine) -> None:
    prompt = random_prompt(5, seed=4)
    eager = generate(make_engine(), prompt, max_tokens=20, logit_bias={EOS: 100.0})
    assert eager == [EOS]
    delayed = generate(make_engine(), prompt, max_tokens=20, min_tokens=5, logit_bias={EOS: 100.0})
    assert len(delayed) == 6 and delayed[-1] == EOS and EOS not in delayed[:5]


def test_stop_token_ids_end_the_request(make_engine) -> None:
    prompt = random_prompt(5, seed=5)
    free = generate(make_engine(), prompt, max_tokens=10, temperature=0.0, ignore_eos=True)
    outputs = run_to_completion(
        make_engine(),
        {"x": (prompt, SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[free[3]]))},
    )["x"]
    assert tokens_of(outputs) == free[: free.index(free[3]) + 1]
    assert outputs[-1].finish_reason == "stop" and outputs[-1].stop_reason == free[3]


def test_seed_reproduces_alone_and_in_a_batch(make_engine) -> None:
    prompt = random_prompt(8, seed=6)
    params = {"max_tokens": 12, "temperature": 1.0, "seed": 1234, "ignore_eos": True}
    alone = generate(make_engine(), prompt, **params)
    batch = {
        f"other{i}": (random_prompt(5 + i, i), SamplingParams(max_tokens=12)) for i in range(6)
    }
    batch["seeded"] = (prompt, SamplingParams(**params))
    together = run_to_completion(make_engine(), batch)
    assert tokens_of(together["seeded"]) == alone
    other_seed = generate(make_engine(), prompt, **{**params, "seed": 4321})
    assert other_seed != alone


def test_presence_and_frequency_penalties_prevent_repeats(make_engine) -> None:
    prompt = random_prompt(4, seed=7)
    free = generate(make_engine(), prompt, max_tokens=40, temperature=0.0, ignore_eos=True)
    assert len(set(free)) < len(free)
    penalized = generate(
        make_engine(), prompt, max_tokens=40, temperature=0.0, ignore_eos=True,
        presence_penalty=2.0, frequency_penalty=2.0,
    )  # fmt: skip
    assert len(set(penalized)) > len(set(free))
    # Every repeat costs 2 + 2 * count: no token can dominate the way it does unpenalized.
    assert max(penalized.count(t) for t in penalized) < max(free.count(t) for t in free)


def test_repetition_penalty_avoids_prompt_tokens(make_engine) -> None:
    prompt = random_prompt(4, seed=8)
    free = generate(make_engine(), prompt, max_tokens=40, temperature=0.0, ignore_eos=True)
    penalized = generate(
        make_engine(),
        prompt,
        max_tokens=40,
        temperature=0.0,
        ignore_eos=True,
        repetition_penalty=2.0,
    )
    assert penalized != free
    repeats = lambda seq: len(seq) - len(set(seq))
    assert repeats(prompt + penalized) < repeats(prompt + free)


@pytest.mark.parametrize("control", [{"top_p": 1e-6}, {"min_p": 1.0}])
def test_top_p_and_min_p_at_extremes_are_greedy(make_engine, control) -> None:
    prompt = random_prompt(10, seed=9)
    greedy = generate(make_engine(), prompt, max_tokens=10, temperature=0.0, ignore_eos=True)
    sampled = generate(
        make_engine(), prompt, max_tokens=10, temperature=1.0, ignore_eos=True, **control
    )
    assert sampled == greedy


def test_logprobs_are_finite_sorted_and_consistent(make_engine) -> None:
    prompt = random_prompt(10, seed=10)
    outputs = run_to_completion(
        make_engine(),
        {"x": (prompt, SamplingParams(max_tokens=5, temperature=0.0, logprobs=3, ignore_eos=True))},
    )["x"]
    for output in outputs:
        (entry,) = output.logprobs
        assert entry.token_id == output.token_ids[0]
        values = [lp for _, lp in entry.top]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert entry.top[0][0] == entry.token_id  # greedy picks the top token
        assert entry.logprob == pytest.approx(values[0]) and entry.logprob < 0
