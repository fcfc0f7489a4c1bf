"""SamplingParams validation and Request bookkeeping."""

from __future__ import annotations

import pytest

from gpt2serve.server.core.request import Request, RequestStatus, is_finished
from gpt2serve.server.core.sampling_params import SamplingParams, SamplingParamsError


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.1}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": float("inf")}, "frequency_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": ["x" * 257]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"seed": -1}, "seed"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"logit_bias": {5: 101.0}}, "logit_bias"),
        ({"logit_bias": {i: 1.0 for i in range(1025)}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"n": "2"}, "n"),
        ({"seed": 2**63}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"logprobs": -1}, "logprobs"),
        ({"top_k": 1.5}, "top_k"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop_token_ids": [1.0]}, "stop_token_ids"),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids"),
        ({"stop": [3]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"ignore_eos": None}, "ignore_eos"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"logit_bias": None}, "logit_bias"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"stop_token_ids": None}, "stop_token_ids"),
        ({"stop_token_ids": "12"}, "stop_token_ids"),
        ({"stop_token_ids": (1, 2)}, "stop_token_ids"),
    ],
)
def test_each_invalid_field_names_itself(kwargs, param) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert param.split("_")[0] in str(info.value)


def test_message_names_the_range() -> None:
    with pytest.raises(SamplingParamsError, match=r"temperature must be in \[0, 2\], got 3.0"):
        SamplingParams(temperature=3.0)
    with pytest.raises(SamplingParamsError, match=r"top_p must be in \(0, 1\]"):
        SamplingParams(top_p=0)


def test_boundaries_are_accepted() -> None:
    params = SamplingParams(
        max_tokens=1,
        min_tokens=1,
        temperature=2.0,
        top_p=1e-9,
        top_k=1,
        min_p=1.0,
        repetition_penalty=2.0,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        stop=["x" * 256] * 16,
        seed=2**63 - 1,  # the largest int64, whatever n (choices mix it with their index)
        n=16,
        logprobs=0,
        logit_bias={0: -100.0, 50256: 100},
    )
    assert params.greedy and params.needs_penalties
    assert SamplingParams(seed=0, logprobs=20, stop=None).stop == []
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1


def test_logit_bias_string_keys_become_ints() -> None:
    params = SamplingParams(logit_bias={"50256": -100, 7: 2.5})
    assert params.logit_bias == {50256: -100.0, 7: 2.5}


def test_defaults_and_normalization() -> None:
    params = SamplingParams(stop="END", top_k=-1)
    assert params.stop == ["END"] and params.top_k == 0
    assert not params.greedy and not params.needs_penalties
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert SamplingParams(presence_penalty=0.5).needs_penalties


def test_request_tracks_tokens_and_status() -> None:
    request = Request("r", [1, 2, 3], SamplingParams(max_tokens=2))
    assert request.num_tokens == 3 and request.status == RequestStatus.WAITING
    request.append_output_token(9)
    assert request.all_token_ids == [1, 2, 3, 9] and request.check_stop() is None
    request.append_output_token(10)
    assert request.check_stop() == RequestStatus.FINISHED_LENGTH
    request.status = RequestStatus.FINISHED_LENGTH
    assert request.finish_reason == "length" and request.is_finished
    assert is_finished(RequestStatus.FINISHED_ABORTED) and not is_finished(RequestStatus.PREEMPTED)


def test_new_request_defaults() -> None:
    request = Request("r", [1, 2], SamplingParams())
    assert request.num_cached_tokens == 0 and request.num_preemptions == 0
    assert request.finish_reason is None and request.stop_reason is None
    assert request.num_prompt_tokens == 2 and request.num_output_tokens == 0
    assert request.block_ids == [] and request.num_computed_tokens == 0


def make(max_tokens: int = 10, eos: int | None = 50256, max_model_len: int = 1024, **params):
    return Request(
        "r", [1, 2], SamplingParams(max_tokens=max_tokens, **params), None, eos, max_model_len
    )


def test_check_stop_rules() -> None:
    request = make(min_tokens=2, stop_token_ids=[7])
    request.append_output_token(7)  # a stop id before min_tokens does not stop
    assert request.check_stop() is None
    request.append_output_token(50256)  # EOS once min_tokens is reached does
    assert request.check_stop() == RequestStatus.FINISHED_STOPPED and request.stop_reason is None
    request = make(stop_token_ids=[7])
    request.append_output_token(7)
    assert request.check_stop() == RequestStatus.FINISHED_STOPPED and request.stop_reason == 7
    request = make(max_tokens=1, stop_token_ids=[7])
    request.append_output_token(7)  # a stop id on the last allowed token is still "stop"
    assert request.check_stop() == RequestStatus.FINISHED_STOPPED
    request = make(eos=None)
    request.append_output_token(50256)  # no EOS configured: just a token
    assert request.check_stop() is None
    request = make(ignore_eos=True)
    request.append_output_token(50256)
    assert request.check_stop() is None
    request = make(max_model_len=3)
    request.append_output_token(5)  # 3 tokens reach the context end
    assert request.check_stop() == RequestStatus.FINISHED_LENGTH


def test_all_token_ids_is_a_copy_of_the_prompt() -> None:
    prompt = [1, 2]
    request = Request("r", prompt, SamplingParams())
    request.append_output_token(3)
    assert prompt == [1, 2] and request.all_token_ids == [1, 2, 3]
    assert request.output_token_ids == [3]
