"""SamplingParams validation and Request bookkeeping."""

from __future__ import annotations

import pytest

from server.request import Request, RequestStatus, SamplingParams, SamplingParamsError, is_finished


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
    ],
)
def test_each_invalid_field_names_itself(kwargs, param) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert param.split("_")[0] in str(info.value)


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
