"""Beam search: token-identical to Hugging Face `generate(num_beams=...)` on the same weights."""

from __future__ import annotations

import pytest
import torch

from gpt2serve.benchmarks.engine_runs import random_prompt, run_to_completion, tokens
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.hf_oracle import EOS
from support.hf_oracle import hf_beam_search as hf_beams


def ours(make_engine, requests: dict, **limits) -> dict[str, list[tuple[list[int], float]]]:
    outputs = run_to_completion(make_engine(**limits), requests)
    return {
        rid: [(o.token_ids, o.beam_score) for o in sorted(outs, key=lambda o: o.index)]
        for rid, outs in outputs.items()
    }


def assert_same(got: list, expected: list) -> None:
    assert [tokens for tokens, _ in got] == [tokens for tokens, _ in expected]
    for (_, score), (_, hf_score) in zip(got, expected, strict=True):
        assert score == pytest.approx(hf_score, abs=1e-4)


CASES = [
    dict(best_of=2, n=1),
    dict(best_of=4, n=2, length_penalty=1.0),
    dict(best_of=4, n=4, length_penalty=0.0, early_stopping=True),
    dict(best_of=8, n=3, length_penalty=2.0, early_stopping="never"),
    dict(best_of=4, n=2, no_repeat_ngram_size=2),
    dict(best_of=4, n=1, repetition_penalty=1.5, length_penalty=-0.5),
    dict(best_of=8, n=8, no_repeat_ngram_size=3, repetition_penalty=1.2, early_stopping=True),
    # EOS pushed up but banned for 5 tokens: hypotheses end on it, at different lengths.
    dict(best_of=4, n=4, min_tokens=5, logit_bias={EOS: 40.0}, length_penalty=0.5),
    dict(best_of=3, n=2, logit_bias={EOS: 28.0, 13: 26.0}, early_stopping=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("prompt_len", [1, 7, 33])
def test_beam_search_matches_hf_generate(hf_tiny, make_engine, case, prompt_len) -> None:
    prompt = random_prompt(prompt_len, seed=prompt_len)
    params = SamplingParams(max_tokens=12, use_beam_search=True, **case)
    got = ours(make_engine, {"a": (prompt, params)})["a"]
    assert_same(got, hf_beams(hf_tiny, prompt, params))


def test_one_beam_is_greedy_as_in_hf(hf_tiny, make_engine) -> None:
    prompt = random_prompt(9, seed=3)
    params = SamplingParams(max_tokens=10, use_beam_search=True, n=1)
    outputs = run_to_completion(make_engine(), {"a": (prompt, params)})["a"]
    with torch.no_grad():
        expected = hf_tiny.generate(
            torch.tensor([prompt]), num_beams=1, do_sample=False, max_new_tokens=10,
            pad_token_id=EOS,
        )[0, 9:].tolist()  # fmt: skip
    assert [t for o in outputs for t in o.token_ids] == expected


@pytest.mark.parametrize("case", CASES[1:4], ids=["k4", "k4-es", "k8-never"])
def test_beam_search_matches_hf_on_hf_initialised_weights(
    hf_saved_model_dir, hf_saved_model, tokenizer, case
) -> None:
    # GPT-2's own init: narrow logits, many close scores; HF's model object, not our export.
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_saved_model_dir).eval()
    engine = Engine(hf_saved_model, tokenizer, EngineConfig(num_blocks=256))
    prompt = random_prompt(20, seed=8)
    params = SamplingParams(max_tokens=10, use_beam_search=True, **case)
    outputs = run_to_completion(engine, {"a": (prompt, params)})["a"]
    got = [(o.token_ids, o.beam_score) for o in sorted(outputs, key=lambda o: o.index)]
    assert_same(got, hf_beams(hf, prompt, params))


def beam_request(prompt_len: int, seed: int, width: int = 4, max_tokens: int = 12) -> tuple:
    params = SamplingParams(max_tokens=max_tokens, use_beam_search=True, best_of=width, n=width)
    return random_prompt(prompt_len, seed=seed), params


def test_beams_in_a_busy_preempting_batch_match_beams_alone(make_engine) -> None:
    beams = {"beams": beam_request(33, seed=1), "beams2": beam_request(20, seed=2, width=3)}
    alone = {rid: ours(make_engine, {rid: req})[rid] for rid, req in beams.items()}

    def sampled() -> dict:  # sampled streams first: the beams are the newest, so preempted first
        params = {"max_tokens": 60, "temperature": 1.0, "ignore_eos": True}
        return {
            f"s{i}": (random_prompt(30, seed=10 + i), SamplingParams(seed=i, **params))
            for i in range(8)
        }

    sampled_alone = run_to_completion(make_engine(), sampled())
    requests = sampled() | beams
    engine = make_engine(num_blocks=30, max_num_batched_tokens=24)  # chunked prefill too
    preempted: list[str] = []
    preempt = engine.scheduler._preempt
    engine.scheduler._preempt = lambda r, out: (preempted.append(r.request_id), preempt(r, out))
    outputs = run_to_completion(engine, requests)
    assert any("#beam" in rid for rid in preempted)  # beams were preempted and recomputed
    for rid, expected in alone.items():
        got = [(o.token_ids, o.beam_score) for o in sorted(outputs[rid], key=lambda o: o.index)]
        assert_same(got, expected)  # scores: float32 sums over other batch shapes
    for rid, expected_outputs in sampled_alone.items():  # seeded draws beside the beams
        assert tokens(outputs[rid]) == tokens(expected_outputs)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks


def test_beams_share_the_prompt_blocks_copy_on_write(make_engine) -> None:
    engine = make_engine(enable_prefix_caching=False)
    prompt, params = beam_request(150, seed=4, width=4)  # 9 full blocks + 6 tokens
    engine.add_request("b", engine.request_limits.check(prompt, params))
    engine.step()  # prefill: the root beam's 10 blocks; then 4 beams fork from it
    manager = engine.block_manager
    assert manager.num_usable_blocks - manager.num_free_blocks == 10
    assert len(engine.scheduler.running) == 4
    schedule = engine.scheduler.schedule()  # each beam appends into the shared 10th block
    assert len(schedule.block_copies) == 3  # copied for three, the fourth writes in place
    assert manager.num_usable_blocks - manager.num_free_blocks == 10 + 3  # not 4 x 10
    engine.scheduler.update(schedule, engine.runner.execute(schedule).sampled_token_ids)


def test_aborting_a_beam_search_midway_frees_every_block(make_engine) -> None:
    engine = make_engine()
    prompt, params = beam_request(40, seed=6, width=8, max_tokens=30)
    engine.add_request("b", engine.request_limits.check(prompt, params))
    for _ in range(4):
        assert engine.step() == []  # nothing is streamed before the search ends
    assert engine.block_manager.usage > 0
    engine.abort_request("b")
    assert engine.block_manager.usage == 0 and not engine.has_unfinished_requests()
    assert not engine.beam_searches.groups


def test_a_beam_group_that_could_not_fit_the_cache_is_refused(make_engine) -> None:
    from gpt2serve.server.core.request_limits import InvalidRequestError

    engine = make_engine(num_blocks=20)  # 19 x 16 = 304 tokens
    prompt, params = beam_request(60, seed=1, width=8, max_tokens=20)  # 8 x 80 = 640
    with pytest.raises(InvalidRequestError, match="beams") as info:
        engine.request_limits.check(prompt, params)
    assert info.value.param == "best_of"


def test_a_stop_token_ends_hypotheses_and_its_text_is_dropped_like_vllm(make_engine) -> None:
    period = 13  # "." pushed to the top of every beam: each hypothesis that takes it stops
    prompt, _ = beam_request(9, seed=5)
    results = {}
    for include in (False, True):
        params = SamplingParams(max_tokens=6, use_beam_search=True, best_of=3, n=3,
                                stop_token_ids=[period], logit_bias={period: 50.0},
                                include_stop_str_in_output=include)  # fmt: skip
        outputs = run_to_completion(make_engine(), {"b": (prompt, params)})["b"]
        results[include] = best = min(outputs, key=lambda o: o.index)
        assert best.token_ids == [period] and best.finish_reason == "stop"
        assert best.stop_reason == period
    assert results[False].text == "" and results[True].text == "."


def test_a_stop_string_ends_hypotheses_as_hf_stopping_criteria_do(make_engine) -> None:
    prompt, _ = beam_request(12, seed=9)
    params = SamplingParams(max_tokens=6, use_beam_search=True, best_of=3, n=3, stop=["."],
                            logit_bias={13: 50.0}, ignore_eos=True)  # fmt: skip
    outputs = sorted(run_to_completion(make_engine(), {"b": (prompt, params)})["b"],
                     key=lambda o: o.index)  # fmt: skip
    best = outputs[0]
    assert best.token_ids == [13] and best.text == "" and best.stop_reason == "."
    assert all("." not in o.text for o in outputs)  # a hit leaves the running beams


def test_a_beam_search_reports_its_queue_time_once(make_engine) -> None:
    engine = make_engine()
    prompt, params = beam_request(20, seed=3, width=3, max_tokens=4)
    engine.add_request("b", engine.request_limits.check(prompt, params))
    engine.step()
    assert len(engine.last_step_stats.queue_times) == 1
    engine.step()
    assert engine.last_step_stats.queue_times == []
