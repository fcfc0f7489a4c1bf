"""`RequestLimits`: the one capacity and token-range check, without a model."""

from __future__ import annotations

import random

import pytest

from gpt2serve.server.core.request import Request
from gpt2serve.server.core.request_limits import (
    CheckedRequest,
    InvalidRequestError,
    RequestLimits,
    check_token_ids,
)
from gpt2serve.server.core.sampling_params import SamplingParams
from support.scheduler_driver import assert_all_free, make_scheduler, run_all

LIMITS = RequestLimits(vocab_size=100, max_model_len=64, num_cache_tokens=48)


@pytest.mark.parametrize(
    ("prompt", "params", "match", "param"),
    [
        ([], SamplingParams(), "at least one token", "prompt"),
        ([100], SamplingParams(), r"prompt token ids must be in \[0, 100\)", "prompt"),
        ([-1], SamplingParams(), "prompt token ids", "prompt"),
        ([1], SamplingParams(logit_bias={100: 1.0}), "logit_bias token ids", "logit_bias"),
        ([1], SamplingParams(stop_token_ids=[100]), "stop_token_ids token ids", "stop_token_ids"),
        ([1] * 60, SamplingParams(max_tokens=5), "maximum context length is 64", "max_tokens"),
        (
            [1] * 40,
            SamplingParams(max_tokens=9),
            r"do not fit the whole KV cache \(48",
            "max_tokens",
        ),
    ],
)
def test_each_rule_names_its_field(prompt, params, match, param) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        LIMITS.check(prompt, params)
    assert info.value.param == param


def test_the_message_names_the_numbers() -> None:
    with pytest.raises(InvalidRequestError) as info:
        LIMITS.check([1] * 60, SamplingParams(max_tokens=5))
    assert "60 prompt tokens + 5 max_tokens = 65" in str(info.value)


def test_exactly_full_is_accepted_and_returns_a_checked_request() -> None:
    params = SamplingParams(max_tokens=8)
    prompt = [1] * 40
    checked = LIMITS.check(prompt, params)
    assert checked == CheckedRequest(prompt, params)
    assert checked.prompt_token_ids is not prompt  # the caller may reuse its list


def test_default_max_tokens_is_the_room_left() -> None:
    assert LIMITS.max_sequence_tokens == 48  # the cache is smaller than the context here
    assert LIMITS.default_max_tokens(40) == 8
    assert LIMITS.default_max_tokens(48) == 1  # none left: the check then says why
    with pytest.raises(InvalidRequestError):
        LIMITS.check([1] * 48, SamplingParams(max_tokens=LIMITS.default_max_tokens(48)))
    roomy = RequestLimits(vocab_size=100, max_model_len=64, num_cache_tokens=1000)
    assert roomy.default_max_tokens(10) == 54


def test_check_token_ids_alone() -> None:
    check_token_ids("tokens", [0, 99], 100)
    with pytest.raises(InvalidRequestError, match="tokens token ids"):
        check_token_ids("tokens", [0, 100], 100)


def test_everything_it_accepts_runs_to_completion_alone() -> None:
    """No request that passes the check can be preempted forever for want of blocks."""
    rng = random.Random(0)
    for trial in range(200):
        block_size = rng.choice([1, 2, 3, 4, 16])
        num_blocks = rng.randint(2, 12)
        limits = RequestLimits(100, 64, (num_blocks - 1) * block_size)
        prompt = [rng.randrange(100) for _ in range(rng.randint(1, 70))]
        params = SamplingParams(max_tokens=rng.randint(1, 40), ignore_eos=True)
        try:
            checked = limits.check(prompt, params)
        except InvalidRequestError:
            continue
        scheduler = make_scheduler(num_blocks=num_blocks, block_size=block_size, budget=8)
        request = Request(f"r{trial}", checked.prompt_token_ids, checked.params, max_model_len=64)
        scheduler.add_request(request)
        run_all(scheduler, max_steps=500)
        assert request.num_output_tokens == params.max_tokens
        assert_all_free(scheduler)
