"""Each sampling control has a visible effect through the engine."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import Engine, EngineConfig
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
    # top_k keeps the candidates' CDF intervals wide: over the full vocabulary they are ~1e-5
    # wide, and batched logits differ from solo ones by ~1e-6 (other GEMM shapes), enough to
    # move a draw to the neighbouring token for a few percent of seeds.
    params = {"max_tokens": 12, "temperature": 1.0, "top_k": 50, "seed": 1234, "ignore_eos": True}
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


@pytest.fixture
def narrow_engine(random_tiny_model, tokenizer) -> Callable[[], Engine]:
    """Engines over `random:tiny`: GPT-2's init keeps every logit within ~1 of the others."""
    return lambda: Engine(random_tiny_model, tokenizer, EngineConfig(num_blocks=256))


def repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_each_openai_penalty_alone_stops_output_repeats(narrow_engine, penalty) -> None:
    prompt = random_prompt(4, seed=7)
    greedy = {"max_tokens": 40, "temperature": 0.0, "ignore_eos": True}
    free = generate(narrow_engine(), prompt, **greedy)
    assert repeats(free) > 20  # unpenalized greedy decoding loops on one token
    # 2.0 off any token already generated outweighs every logit gap of this model.
    penalized = generate(narrow_engine(), prompt, **greedy, **{penalty: 2.0})
    assert repeats(penalized) == 0 and penalized[:2] == free[:2]


def test_frequency_grows_with_count_while_presence_does_not(narrow_engine) -> None:
    prompt = random_prompt(4, seed=7)
    greedy = {"max_tokens": 30, "temperature": 0.0, "ignore_eos": True}
    free = generate(narrow_engine(), prompt, **greedy)
    loop = max(set(free), key=free.count)
    # A penalty too small to beat the loop's lead once: presence charges it once and the loop
    # survives; frequency charges every repeat again until the loop breaks.
    presence = generate(narrow_engine(), prompt, **greedy, presence_penalty=0.05)
    frequency = generate(narrow_engine(), prompt, **greedy, frequency_penalty=0.05)
    assert presence.count(loop) == free.count(loop) > 15
    assert frequency.count(loop) < 8 and len(set(frequency)) > len(set(presence))


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


def test_temperature_near_zero_is_greedy(make_engine) -> None:
    prompt = random_prompt(10, seed=11)
    greedy = generate(make_engine(), prompt, max_tokens=16, temperature=0.0, ignore_eos=True)
    for seed in range(3):
        cold = generate(
            make_engine(), prompt, max_tokens=16, temperature=1e-3, seed=seed, ignore_eos=True
        )
        assert cold == greedy


def test_higher_temperature_spreads_over_more_tokens(make_engine) -> None:
    prompt = random_prompt(6, seed=12)
    greedy = generate(make_engine(), prompt, max_tokens=1, temperature=0.0)

    def first_tokens(temperature: float) -> set[int]:
        params = SamplingParams(max_tokens=1, temperature=temperature, seed=0, n=16)
        outputs = run_to_completion(make_engine(), {"x": (prompt, params)})["x"]
        return {t for o in outputs for t in o.token_ids}  # seeds 0..15, one per choice

    assert first_tokens(0.05) == set(greedy)
    assert len(first_tokens(0.5)) < len(first_tokens(1.5)) and len(first_tokens(1.5)) > 8


def test_logprob_of_a_forced_token_is_its_unbiased_value(make_engine) -> None:
    prompt = random_prompt(10, seed=13)
    free = run_to_completion(
        make_engine(),
        {"x": (prompt, SamplingParams(max_tokens=1, temperature=0.0, logprobs=5))},
    )["x"]
    runner_up, runner_up_logprob = free[0].logprobs[0].top[1]
    forced = run_to_completion(
        make_engine(),
        {"x": (prompt, SamplingParams(max_tokens=1, logprobs=5, logit_bias={runner_up: 100}))},
    )["x"]
    (entry,) = forced[0].logprobs
    assert forced[0].token_ids == [runner_up] and entry.token_id == runner_up
    # +100 made it certain to be drawn; the reported logprob is still the model's own.
    assert entry.logprob == pytest.approx(runner_up_logprob, abs=1e-5) and entry.logprob < -0.01
    for (token, logprob), (free_token, free_logprob) in zip(
        entry.top, free[0].logprobs[0].top, strict=True
    ):
        assert token == free_token and logprob == pytest.approx(free_logprob, abs=1e-5)


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


def test_choice_seeds_are_mixed_not_consecutive(make_engine) -> None:
    """Choice 1 of seed 42 is not choice 0 of seed 43 (with `seed + index` it was)."""
    prompt = random_prompt(6, seed=9)
    sampled = {"max_tokens": 12, "temperature": 1.0, "top_k": 50, "ignore_eos": True}

    def choices(seed: int, n: int) -> list[list[int]]:
        params = SamplingParams(seed=seed, n=n, **sampled)
        outputs = run_to_completion(make_engine(), {"r": (prompt, params)})["r"]
        return [tokens_of(outputs, index) for index in range(n)]

    pair = choices(42, 2)
    assert pair[0] == choices(42, 1)[0]  # choice 0 keeps the request's seed
    assert pair[1] != choices(43, 1)[0]
    assert pair == choices(42, 2)  # still reproducible


def test_the_largest_seed_with_several_choices_is_valid() -> None:
    from gpt2serve.server.core.sampling_params import MAX_SEED, SamplingParams, choice_seed

    params = SamplingParams(seed=MAX_SEED, n=16)
    assert params.seed == MAX_SEED
    assert all(0 <= choice_seed(MAX_SEED, i) <= MAX_SEED for i in range(16))
    assert choice_seed(7, 0) == 7 and len({choice_seed(7, i) for i in range(16)}) == 16
