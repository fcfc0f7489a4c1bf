"""Prompt logprobs in the engine: HF's numbers whatever the chunking, batch, cache or preemption."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gpt2serve.server.core.messages import RequestOutput, TokenLogprobs
from gpt2serve.server.core.request import RequestStatus
from gpt2serve.server.core.sampling_params import SamplingParams, SamplingParamsError
from gpt2serve.server.engine.engine import Engine
from support.engine_driver import random_prompt, record_schedules, run_to_completion, tokens_of
from support.hf_oracle import hf_prompt_logprobs
from support.scheduler_driver import assert_all_free, make_request, make_scheduler, run_all, step

PROMPT = random_prompt(45, seed=5)
GREEDY = {"temperature": 0.0, "ignore_eos": True}
HFLogprobs = Callable[[list[int]], torch.Tensor]


@pytest.fixture(scope="module")
def hf_logprobs(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> HFLogprobs:
    """Oracle: HF transformers on tiny_model's weights; row i scores prompt token i + 1."""
    pytest.importorskip("transformers")
    return hf_prompt_logprobs(tiny_model, Path(tmp_path_factory.mktemp("hf_tiny")))


def assert_matches_hf(
    entries: list[TokenLogprobs | None] | None, prompt: list[int], expected: torch.Tensor, top: int
) -> None:
    """Chosen logprob, top-N ids and values within 1e-4 of HF, and the vocabulary rank."""
    assert entries is not None and len(entries) == len(prompt)
    assert entries[0] is None  # nothing precedes the first token
    for i, entry in enumerate(entries[1:], start=1):
        row = expected[i - 1]  # [vocab]
        assert entry is not None and entry.token_id == prompt[i]
        assert entry.logprob == pytest.approx(row[prompt[i]].item(), abs=1e-4)
        values, ids = row.topk(top)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=1e-4)
        # Deep in the vocabulary logits crowd: the rank is exact up to the same 1e-4.
        value = row[prompt[i]].item()
        above, near = int((row > value + 1e-4).sum()), int((row > value - 1e-4).sum())
        assert above + 1 <= entry.rank <= near + 1


def first_prompt_logprobs(outputs: list[RequestOutput]) -> list[TokenLogprobs | None] | None:
    """The prompt logprobs, checking they come with the first output and only there."""
    assert all(o.prompt_logprobs is None for o in outputs[1:])
    return outputs[0].prompt_logprobs


def assert_all_blocks_free(engine: Engine) -> None:
    assert not engine.has_unfinished_requests()
    assert_all_free(engine.scheduler)


def test_prompt_logprobs_match_hf_transformers(make_engine, hf_logprobs: HFLogprobs) -> None:
    engine = make_engine()
    params = SamplingParams(max_tokens=3, prompt_logprobs=5, logprobs=2, **GREEDY)
    outputs = run_to_completion(engine, {"a": (PROMPT, params)})["a"]
    assert_matches_hf(first_prompt_logprobs(outputs), PROMPT, hf_logprobs(PROMPT), 5)
    assert len(tokens_of(outputs)) == 3 and outputs[-1].finish_reason == "length"
    assert_all_blocks_free(engine)


def test_rescoring_a_generation_reproduces_its_generated_logprobs(make_engine) -> None:
    """Prompt logprobs and generated-token logprobs are the same numbers from the same model."""
    prompt = random_prompt(10, seed=8)
    generate = SamplingParams(max_tokens=12, logprobs=3, **GREEDY)
    outputs = run_to_completion(make_engine(), {"g": (prompt, generate)})["g"]
    generated = [lp for o in outputs for lp in o.logprobs]
    scored_prompt = prompt + tokens_of(outputs)
    score = SamplingParams(max_tokens=0, prompt_logprobs=3)
    scored = run_to_completion(make_engine(), {"s": (scored_prompt, score)})["s"]
    entries = first_prompt_logprobs(scored)[len(prompt) :]
    for entry, gen in zip(entries, generated, strict=True):
        assert entry.token_id == gen.token_id
        assert entry.logprob == pytest.approx(gen.logprob, abs=1e-4)
        assert [t for t, _ in entry.top] == [t for t, _ in gen.top]
        assert entry.rank == 1  # greedy picked the most likely token


@pytest.mark.parametrize("budget", [7, 16])
def test_chunked_prefill_gives_the_same_values(
    make_engine, hf_logprobs: HFLogprobs, budget: int
) -> None:
    engine = make_engine(max_num_batched_tokens=budget)
    schedules = record_schedules(engine)
    params = SamplingParams(max_tokens=2, prompt_logprobs=4, **GREEDY)
    outputs = run_to_completion(engine, {"a": (PROMPT, params)})["a"]
    chunks = [s for out in schedules for s in out.scheduled if s.num_computed_tokens < len(PROMPT)]
    assert len(chunks) == -(-len(PROMPT) // budget)  # the prompt really ran in pieces
    assert_matches_hf(first_prompt_logprobs(outputs), PROMPT, hf_logprobs(PROMPT), 4)
    assert_all_blocks_free(engine)


def test_a_neighbour_without_prompt_logprobs_is_unaffected(
    make_engine, hf_logprobs: HFLogprobs
) -> None:
    other = random_prompt(30, seed=6)
    plain = SamplingParams(max_tokens=6, logprobs=2, **GREEDY)
    alone = run_to_completion(make_engine(), {"b": (other, plain)})["b"]
    engine = make_engine(max_num_batched_tokens=60)  # both prompts share steps, b chunked
    schedules = record_schedules(engine)
    wants = SamplingParams(max_tokens=4, prompt_logprobs=2, **GREEDY)
    outputs = run_to_completion(engine, {"a": (PROMPT, wants), "b": (other, plain)})
    assert len(schedules[0].scheduled) == 2  # really one batch
    assert_matches_hf(first_prompt_logprobs(outputs["a"]), PROMPT, hf_logprobs(PROMPT), 2)
    assert all(o.prompt_logprobs is None for o in outputs["b"])
    assert tokens_of(outputs["b"]) == tokens_of(alone)
    assert [lp.logprob for o in outputs["b"] for lp in o.logprobs] == pytest.approx(
        [lp.logprob for o in alone for lp in o.logprobs], abs=1e-5
    )
    assert_all_blocks_free(engine)


def test_a_request_wanting_prompt_logprobs_takes_no_prefix_cache_hit(
    make_engine, hf_logprobs: HFLogprobs
) -> None:
    engine = make_engine()
    manager = engine.block_manager
    run_to_completion(engine, {"warm": (PROMPT, SamplingParams(max_tokens=1, **GREEDY))})
    queries, hits = manager.prefix_cache_queries, manager.prefix_cache_hits
    params = SamplingParams(max_tokens=1, prompt_logprobs=3, **GREEDY)
    outputs = run_to_completion(engine, {"a": (PROMPT, params)})["a"]
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (queries, hits)
    assert_matches_hf(first_prompt_logprobs(outputs), PROMPT, hf_logprobs(PROMPT), 3)
    # The cache was warm: the same prompt without prompt logprobs does hit it.
    run_to_completion(engine, {"b": (PROMPT, SamplingParams(max_tokens=1, **GREEDY))})
    assert manager.prefix_cache_hits - hits == (len(PROMPT) - 1) // 16 * 16 > 0
    assert_all_blocks_free(engine)


def test_max_tokens_zero_finishes_after_the_prompt(make_engine, hf_logprobs: HFLogprobs) -> None:
    engine = make_engine(max_num_batched_tokens=20)
    params = SamplingParams(max_tokens=0, prompt_logprobs=1)
    outputs = run_to_completion(engine, {"a": (PROMPT, params)})["a"]
    assert len(outputs) == 1
    (output,) = outputs
    assert output.finished and output.finish_reason == "length"
    assert (output.text, output.token_ids, output.num_output_tokens) == ("", [], 0)
    assert output.num_prompt_tokens == len(PROMPT)
    assert_matches_hf(output.prompt_logprobs, PROMPT, hf_logprobs(PROMPT), 1)
    assert_all_blocks_free(engine)


def test_one_token_prompt_scores_nothing(make_engine) -> None:
    engine = make_engine()
    params = SamplingParams(max_tokens=0, prompt_logprobs=2)
    outputs = run_to_completion(engine, {"a": ([464], params)})
    assert [o.prompt_logprobs for o in outputs["a"]] == [[None]]
    assert_all_blocks_free(engine)


def test_preempted_mid_prefill_keeps_values_and_blocks(
    make_engine, hf_logprobs: HFLogprobs
) -> None:
    engine = make_engine(num_blocks=7, max_num_batched_tokens=4)  # 6 blocks of 16: tight
    schedules = record_schedules(engine)
    prompt = random_prompt(50, seed=2)
    requests = {
        "long": (random_prompt(20, seed=1), SamplingParams(max_tokens=60, **GREEDY)),
        "pl": (prompt, SamplingParams(max_tokens=3, prompt_logprobs=2, **GREEDY)),
    }
    outputs = run_to_completion(engine, requests)
    reached = 0
    mid_prefill_preemptions = 0
    for schedule in schedules:
        if "pl" in schedule.preempted_request_ids and reached < len(prompt):
            mid_prefill_preemptions += 1
        for s in schedule.scheduled:
            if s.request.request_id == "pl":
                reached = s.num_computed_tokens + s.num_new_tokens
    assert mid_prefill_preemptions > 0
    assert_matches_hf(first_prompt_logprobs(outputs["pl"]), prompt, hf_logprobs(prompt), 2)
    assert len(tokens_of(outputs["pl"])) == 3
    assert_all_blocks_free(engine)


def test_n_choices_and_a_mid_prefill_abort_leave_every_block_free(make_engine) -> None:
    engine = make_engine(num_blocks=64, max_num_batched_tokens=16)
    params = SamplingParams(max_tokens=4, n=2, seed=1, prompt_logprobs=1, ignore_eos=True)
    gone = random_prompt(60, seed=3)
    engine.add_request("gone", engine.request_limits.check(gone, SamplingParams(prompt_logprobs=0)))
    engine.add_request("n2", engine.request_limits.check(PROMPT, params))
    engine.step()
    assert 0 < engine.scheduler.requests["gone"].num_computed_tokens < len(gone)
    engine.abort_request("gone")
    outputs: dict[int, list[RequestOutput]] = {0: [], 1: []}
    while engine.has_unfinished_requests():
        for output in engine.step():
            assert output.request_id == "n2"
            outputs[output.index].append(output)
    first = [first_prompt_logprobs(outputs[i]) for i in (0, 1)]
    assert first[0] is not None and len(first[0]) == len(PROMPT)
    assert first[0][0] is None and first[1][0] is None
    assert [e.logprob for e in first[0][1:]] == pytest.approx(
        [e.logprob for e in first[1][1:]], abs=1e-5
    )
    assert_all_blocks_free(engine)


# Scheduler bookkeeping, without a model.


def test_scheduler_skips_the_prefix_cache_for_prompt_logprobs() -> None:
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(make_request("warm", 12))
    run_all(scheduler)
    manager = scheduler.block_manager
    queries = manager.prefix_cache_queries
    wants = make_request("warm", 12, prompt_logprobs=0)
    wants.request_id = "wants"
    scheduler.add_request(wants)
    output, _ = step(scheduler)
    assert output.scheduled[0].num_new_tokens == 12  # the whole prompt is computed again
    assert wants.num_cached_tokens == 0 and manager.prefix_cache_queries == queries
    run_all(scheduler)
    assert_all_free(scheduler)


def test_scheduler_finishes_max_tokens_zero_after_the_prompt_without_sampling() -> None:
    scheduler = make_scheduler(block_size=4, budget=5)
    request = make_request("score", 12, max_tokens=0, prompt_logprobs=0)
    scheduler.add_request(request)
    updates = []
    while scheduler.has_unfinished_requests():
        output, updated = step(scheduler)
        assert not output.sampling_requests  # never samples
        updates.append(updated)
    assert updates == [[], [], [request]]  # 5 + 5 + 2 prompt tokens, then done
    assert request.status == RequestStatus.FINISHED_LENGTH and request.output_token_ids == []
    assert_all_free(scheduler)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"prompt_logprobs": True}, "prompt_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1, "prompt_logprobs": 1}, "max_tokens"),
    ],
)
def test_prompt_logprobs_params_are_validated(kwargs: dict, param: str) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param


def test_max_tokens_zero_is_allowed_only_to_score_the_prompt() -> None:
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).max_tokens == 0
    with pytest.raises(SamplingParamsError, match="echo or prompt_logprobs"):
        SamplingParams(max_tokens=0)
