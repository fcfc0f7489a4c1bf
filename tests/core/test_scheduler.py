"""Scheduler without a model: budgets, chunked prefill, FCFS, prefix hits, stops, aborts."""

from __future__ import annotations

import pytest

from gpt2serve.server.core.request import Request, RequestStatus
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.core.scheduler import Scheduler
from support.scheduler_driver import (
    assert_all_free,
    held_blocks,
    make_request,
    make_scheduler,
    run_all,
    step,
)

EOS = 50256


def test_budget_and_max_num_seqs_are_respected() -> None:
    scheduler = make_scheduler(budget=20, max_num_seqs=3)
    for i in range(6):
        scheduler.add_request(make_request(f"r{i}", 9))
    output = scheduler.schedule()
    assert output.num_batched_tokens <= 20 and len(output.scheduled) <= 3
    assert [s.num_new_tokens for s in output.scheduled] == [9, 9, 2]
    assert [s.sample for s in output.scheduled] == [True, True, False]


def test_chunked_prefill_samples_only_after_the_last_chunk() -> None:
    scheduler = make_scheduler(budget=8)
    request = make_request("long", 30, max_tokens=2)
    scheduler.add_request(request)
    chunks = []
    while request.num_output_tokens == 0:
        output, _ = step(scheduler)
        (entry,) = output.scheduled
        chunks.append((entry.num_computed_tokens, entry.num_new_tokens, entry.sample))
    assert chunks == [(0, 8, False), (8, 8, False), (16, 8, False), (24, 6, True)]
    run_all(scheduler)
    assert request.output_token_ids == [7, 8] and request.finish_reason == "length"
    assert_all_free(scheduler)


def test_prefill_and_decode_mix_in_one_step() -> None:
    scheduler = make_scheduler(budget=10)
    scheduler.add_request(make_request("a", 4))
    step(scheduler)
    scheduler.add_request(make_request("b", 20))
    output, _ = step(scheduler)
    assert [(s.request.request_id, s.num_new_tokens) for s in output.scheduled] == [
        ("a", 1),
        ("b", 9),
    ]


def test_fcfs_head_of_line_is_not_skipped() -> None:
    scheduler = make_scheduler(num_blocks=8, budget=100)  # 7 usable blocks of 4
    scheduler.add_request(make_request("first", 20, max_tokens=3))  # 5 blocks
    scheduler.add_request(make_request("big", 20))  # cannot fit next to it
    scheduler.add_request(make_request("small", 2))  # would fit, but must wait its turn
    output, _ = step(scheduler)
    assert [s.request.request_id for s in output.scheduled] == ["first"]
    run_all(scheduler)
    assert_all_free(scheduler)


def test_prefix_cache_skips_compute_and_same_step_siblings_share() -> None:
    scheduler = make_scheduler(budget=100)
    first = make_request("same", 10)
    sibling = Request("sib", list(first.prompt_token_ids), first.sampling_params)
    scheduler.add_request(first)
    scheduler.add_request(sibling)
    output = scheduler.schedule()
    assert [s.num_new_tokens for s in output.scheduled] == [10, 2]  # 2 full blocks reused
    assert sibling.block_ids[:2] == first.block_ids[:2]
    scheduler.update(output, [1, 2])
    run_all(scheduler)
    later = Request("later", list(first.prompt_token_ids), first.sampling_params)
    scheduler.add_request(later)
    output = scheduler.schedule()
    assert output.scheduled[0].num_computed_tokens == 8 and later.num_cached_tokens == 8
    assert scheduler.block_manager.prefix_cache_hits >= 16
    scheduler.update(output, [1])
    run_all(scheduler)
    assert_all_free(scheduler)


def bring_victim_to(state: str) -> tuple[Scheduler, Request, Request]:
    """A scheduler whose request "victim" is in `state`, next to a request "other"."""
    scheduler = make_scheduler(num_blocks=9, budget=8)  # 8 usable blocks: each fits alone
    victim = make_request("victim", 12, max_tokens=20)  # 31 slots: 8 blocks at most
    other = make_request("other", 8, max_tokens=20)  # 27 slots: 7 blocks at most
    # Mid-prefill needs the victim first: its 12-token prompt then takes the whole budget of 8.
    for request in (victim, other) if state == "prefilling" else (other, victim):
        scheduler.add_request(request)
    if state == "prefilling":
        step(scheduler)
    while state == "decoding" and victim.num_output_tokens == 0:
        step(scheduler)
    while state == "preempted" and victim.status != RequestStatus.PREEMPTED:
        step(scheduler)
    return scheduler, victim, other


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding", "preempted"])
def test_abort_in_every_state_frees_blocks(state: str) -> None:
    scheduler, victim, other = bring_victim_to(state)
    if state == "waiting":
        assert victim.status == RequestStatus.WAITING and victim.block_ids == []
    elif state == "prefilling":
        assert victim.status == RequestStatus.RUNNING and victim.num_output_tokens == 0
        assert 0 < victim.num_computed_tokens == 8 < victim.num_prompt_tokens
        assert len(victim.block_ids) == 2 and other.status == RequestStatus.WAITING
    elif state == "decoding":
        assert victim.status == RequestStatus.RUNNING and victim.num_output_tokens > 0
        assert victim.num_computed_tokens >= victim.num_prompt_tokens
    else:
        assert victim.block_ids == [] and scheduler.waiting[0] is victim
    assert scheduler.abort_request("victim")
    assert victim.status == RequestStatus.FINISHED_ABORTED and victim.block_ids == []
    assert victim not in scheduler.running and victim not in scheduler.waiting
    assert not scheduler.abort_request("victim")
    # Only the other request's blocks are still held (none at all when it has not started).
    assert held_blocks(scheduler) == len(other.block_ids)
    if state == "prefilling":
        assert_all_free(scheduler)
    run_all(scheduler)
    assert other.output_token_ids == list(range(7, 27)) and other.finish_reason == "length"
    assert_all_free(scheduler)


def test_abort_between_schedule_and_update_drops_the_token() -> None:
    scheduler = make_scheduler()
    request = make_request("a", 3)
    scheduler.add_request(request)
    output = scheduler.schedule()
    scheduler.abort_request("a")
    assert scheduler.update(output, [5]) == []
    assert request.output_token_ids == []
    assert_all_free(scheduler)


def test_stop_conditions() -> None:
    scheduler = make_scheduler()
    eos = Request("eos", [1, 2], SamplingParams(max_tokens=10))
    ignore = Request("ignore", [1, 2], SamplingParams(max_tokens=3, ignore_eos=True))
    delayed = Request("delayed", [1, 2], SamplingParams(max_tokens=10, min_tokens=3))
    stop_id = Request("stop_id", [1, 2], SamplingParams(max_tokens=10, stop_token_ids=[99]))
    context = Request(
        "context", [1] * 6, SamplingParams(max_tokens=100, ignore_eos=True), max_model_len=8
    )
    for request in (eos, ignore, delayed, stop_id, context):
        scheduler.add_request(request)
    run_all(scheduler, token_for=lambda r: 99 if r.request_id == "stop_id" else EOS)
    assert eos.output_token_ids == [EOS] and eos.finish_reason == "stop"
    assert ignore.output_token_ids == [EOS] * 3 and ignore.finish_reason == "length"
    assert len(delayed.output_token_ids) == 3 and delayed.finish_reason == "stop"
    assert stop_id.output_token_ids == [99] and stop_id.stop_reason == 99
    assert context.num_tokens == 8 and context.finish_reason == "length"
    assert_all_free(scheduler)


def test_finish_request_for_stop_strings() -> None:
    scheduler = make_scheduler()
    request = make_request("a", 3, max_tokens=50)
    scheduler.add_request(request)
    step(scheduler)
    assert scheduler.finish_request("a", RequestStatus.FINISHED_STOPPED)
    assert request.finish_reason == "stop" and not scheduler.has_unfinished_requests()
    assert_all_free(scheduler)


def test_duplicate_request_id_rejected() -> None:
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 2))
    with pytest.raises(ValueError, match="already exists"):
        scheduler.add_request(make_request("a", 2))


def test_decode_schedules_one_token_per_step() -> None:
    scheduler = make_scheduler()
    request = make_request("a", 6, max_tokens=4)
    scheduler.add_request(request)
    output, updated = step(scheduler)
    assert (output.scheduled[0].num_new_tokens, updated) == (6, [request])
    for expected_computed in (6, 7, 8):
        output, _ = step(scheduler)
        (entry,) = output.scheduled
        assert (entry.num_computed_tokens, entry.num_new_tokens, entry.sample) == (
            expected_computed,
            1,
            True,
        )
    assert request.is_finished and request.output_token_ids == [7, 8, 9, 10]
    assert scheduler.schedule().is_empty
    assert_all_free(scheduler)


def test_siblings_admitted_together_share_prompt_blocks() -> None:
    scheduler = make_scheduler(budget=100)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    prompt = list(range(500, 513))  # 3 full blocks of 4 + 1 token
    siblings = [Request(f"s#{i}", list(prompt), params) for i in range(3)]
    for request in siblings:
        scheduler.add_request(request)
    output = scheduler.schedule()
    assert [s.num_new_tokens for s in output.scheduled] == [13, 1, 1]
    assert [s.num_computed_tokens for s in output.scheduled] == [0, 12, 12]
    shared = siblings[0].block_ids[:3]
    assert all(r.block_ids[:3] == shared for r in siblings)
    assert [scheduler.block_manager.ref_counts[b] for b in shared] == [3, 3, 3]
    assert len({r.block_ids[3] for r in siblings}) == 3  # each owns its partial tail block
    assert [r.num_cached_tokens for r in siblings] == [0, 12, 12]
    scheduler.update(output, [1, 2, 3])
    run_all(scheduler)
    assert_all_free(scheduler)


def test_a_request_filling_the_whole_cache_runs() -> None:
    """`RequestLimits` admits prompt + max_tokens up to the cache size: that must run, alone."""
    scheduler = make_scheduler(num_blocks=5, block_size=4)  # 16 token slots
    scheduler.add_request(make_request("fits", 10, max_tokens=6))  # 16 tokens, exactly
    done = make_request("done", 2)
    done.status = RequestStatus.FINISHED_ABORTED
    with pytest.raises(ValueError, match="not a new request"):
        scheduler.add_request(done)
    run_all(scheduler)
    assert_all_free(scheduler)


def test_invalid_calls() -> None:
    with pytest.raises(ValueError, match="max_num_seqs"):
        make_scheduler(max_num_seqs=0)
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 3))
    with pytest.raises(ValueError, match="not a finished status"):
        scheduler.finish_request("a", RequestStatus.RUNNING)
    output = scheduler.schedule()
    with pytest.raises(ValueError, match="sampling requests"):
        scheduler.update(output, [])
    assert "a" in scheduler.requests and "zz" not in scheduler.requests
    assert not scheduler.abort_request("zz")
