"""Scheduler without a model: budgets, chunked prefill, FCFS, preemption, prefix hits, aborts."""

from __future__ import annotations

import random

import pytest

from server.block_manager import BlockManager
from server.request import Request, RequestStatus, SamplingParams
from server.scheduler import Scheduler

EOS = 50256


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=64, **kwargs) -> Scheduler:
    manager = BlockManager(num_blocks, block_size, kwargs.pop("prefix", True))
    return Scheduler(manager, max_num_seqs, budget, kwargs.pop("max_model_len", 1024))


def make_request(rid: str, prompt_len: int, max_tokens: int = 5, **params) -> Request:
    prompt = [1000 + (hash(rid) + i) % 5000 for i in range(prompt_len)]
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params))


def fake_token(request: Request) -> int:
    return 7 + request.num_output_tokens


def step(scheduler: Scheduler, token_for=fake_token):
    output = scheduler.schedule()
    sampled = [token_for(s.request) for s in output.sampling_requests]
    return output, scheduler.update(output, sampled)


def run_all(scheduler: Scheduler, max_steps: int = 10_000, token_for=fake_token) -> int:
    steps = 0
    while scheduler.has_unfinished_requests():
        step(scheduler, token_for)
        steps += 1
        assert steps < max_steps
    return steps


def assert_all_free(scheduler: Scheduler) -> None:
    manager = scheduler.block_manager
    manager.check_invariants()
    assert manager.num_free_blocks == manager.num_usable_blocks
    assert all(count == 0 for count in manager.ref_counts)


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


def test_preemption_requeues_at_head_and_keeps_output() -> None:
    scheduler = make_scheduler(num_blocks=7, budget=64)  # 6 usable blocks of 4
    a = make_request("a", 8, max_tokens=12)
    b = make_request("b", 8, max_tokens=12)
    scheduler.add_request(a)
    scheduler.add_request(b)
    run_all(scheduler)
    assert scheduler.num_preemptions_total > 0 and b.num_preemptions > 0
    for request in (a, b):
        assert request.output_token_ids == list(range(7, 19))
        assert request.finish_reason == "length"
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


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding", "preempted"])
def test_abort_in_every_state_frees_blocks(state: str) -> None:
    scheduler = make_scheduler(num_blocks=9, budget=8)  # 8 usable blocks: each fits alone
    victim = make_request("victim", 12, max_tokens=20)
    other = make_request("other", 8, max_tokens=20)
    scheduler.add_request(other)
    scheduler.add_request(victim)
    if state != "waiting":
        step(scheduler)
    if state == "decoding":
        while victim.num_output_tokens == 0:
            step(scheduler)
    if state == "preempted":
        while victim.status != RequestStatus.PREEMPTED:
            step(scheduler)
    assert scheduler.abort_request("victim")
    assert victim.status == RequestStatus.FINISHED_ABORTED and victim.block_ids == []
    assert not scheduler.abort_request("victim")
    run_all(scheduler)
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


def test_random_soak_every_block_returns() -> None:
    rng = random.Random(1234)
    scheduler = make_scheduler(num_blocks=24, block_size=4, max_num_seqs=6, budget=24)
    expected: dict[str, int] = {}
    aborted: set[str] = set()
    next_id = 0
    for _ in range(400):
        if rng.random() < 0.3 and next_id < 80:
            max_tokens = rng.randint(1, 12)
            prompt_len = rng.randint(1, 40)
            prompt = [rng.choice([5, 6, 7, 8]) for _ in range(prompt_len)]  # repeats: prefix hits
            request = Request(
                f"q{next_id}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True)
            )
            scheduler.add_request(request)
            expected[request.request_id] = max_tokens
            next_id += 1
        if rng.random() < 0.05 and scheduler.requests:
            victim = rng.choice(sorted(scheduler.requests))
            scheduler.abort_request(victim)
            aborted.add(victim)
        step(scheduler)
        scheduler.block_manager.check_invariants()
    run_all(scheduler)
    assert scheduler.num_preemptions_total > 0
    assert_all_free(scheduler)
    assert next_id > 40
