"""Scheduler preemption by recompute, and random soaks against a fake K/V model."""

from __future__ import annotations

import random

import pytest

from gpt2serve.server.core.block_manager import NULL_BLOCK
from gpt2serve.server.core.messages import SchedulerOutput
from gpt2serve.server.core.request import Request, RequestStatus
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.core.scheduler import Scheduler
from support.block_checks import check_block_invariants
from support.scheduler_driver import (
    assert_all_free,
    fake_token,
    make_request,
    make_scheduler,
    run_all,
    step,
)


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


def test_preempts_the_newest_and_requeues_it_ahead_of_older_waiting() -> None:
    scheduler = make_scheduler(num_blocks=5, block_size=2, max_num_seqs=2)  # 4 usable blocks
    a, b, c = (make_request(rid, 2, max_tokens=7) for rid in "abc")  # <= 8 slots each
    for request in (a, b, c):
        scheduler.add_request(request)
    for _ in range(3):  # a and b fill 2 blocks each; c waits on max_num_seqs
        output, _ = step(scheduler)
        assert not output.preempted_request_ids
    output = scheduler.schedule()  # a's 5th token needs a 5th block: b, the newest, goes
    assert output.preempted_request_ids == ["b"]
    assert [s.request.request_id for s in output.scheduled] == ["a"]  # no admission this step
    assert list(scheduler.waiting) == [b, c] and b.status == RequestStatus.PREEMPTED
    assert b.block_ids == [] and b.output_token_ids == [7, 8, 9] and b.num_preemptions == 1
    scheduler.update(output, [fake_token(a)])
    run_all(scheduler)
    for request in (a, b, c):
        assert request.output_token_ids == list(range(7, 14))
    assert_all_free(scheduler)


def test_a_lone_request_that_cannot_grow_preempts_itself() -> None:
    scheduler = make_scheduler(num_blocks=4, block_size=2, max_num_seqs=2)  # 3 usable blocks
    a = make_request("a", 2, max_tokens=4)  # needs at most 5 slots = 3 blocks
    b = make_request("b", 2, max_tokens=4)
    scheduler.add_request(a)
    scheduler.add_request(b)
    preempted = []
    while scheduler.has_unfinished_requests():
        output, _ = step(scheduler)
        preempted += output.preempted_request_ids
    assert preempted and set(preempted) <= {"a", "b"}
    assert a.output_token_ids == b.output_token_ids == [7, 8, 9, 10]
    assert_all_free(scheduler)


def test_resume_after_preemption_keeps_first_num_cached_tokens() -> None:
    scheduler = make_scheduler(num_blocks=7, budget=64)
    a = make_request("a", 8, max_tokens=12)
    b = make_request("b", 8, max_tokens=12)
    scheduler.add_request(a)
    scheduler.add_request(b)
    run_all(scheduler)
    assert b.num_preemptions > 0 and b.num_cached_tokens == 0  # resume hits are not counted


class FakeKVModel:
    """Writes a prefix-dependent value per slot, then checks every attended slot (like K/V)."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, int] = {}
        self.prefix_keys: dict[str, list[int]] = {}

    def key(self, request: Request, pos: int) -> int:
        # A value that depends on the whole prefix, as real K/V does through attention.
        keys = self.prefix_keys.setdefault(request.request_id, [])
        for i in range(len(keys), pos + 1):
            keys.append(hash((keys[-1] if keys else None, request.all_token_ids[i])))
        return keys[pos]

    def slot(self, request: Request, pos: int) -> int:
        block = request.block_ids[pos // self.block_size]
        assert block != NULL_BLOCK
        return block * self.block_size + pos % self.block_size

    def run(self, output: SchedulerOutput) -> None:
        """All writes of the step happen before any read, as in every layer of the model."""
        for s in output.scheduled:
            for pos in range(s.num_computed_tokens, s.num_computed_tokens + s.num_new_tokens):
                self.slots[self.slot(s.request, pos)] = self.key(s.request, pos)
        for s in output.scheduled:
            for pos in range(s.num_computed_tokens + s.num_new_tokens):
                assert self.slots[self.slot(s.request, pos)] == self.key(s.request, pos), (
                    f"{s.request.request_id} reads stale K/V at position {pos}"
                )


def check_step(scheduler: Scheduler, output: SchedulerOutput) -> None:
    """Per-step invariants: budgets, table sizes, ref counts equal table membership."""
    manager = scheduler.block_manager
    assert output.num_batched_tokens == sum(s.num_new_tokens for s in output.scheduled)
    assert output.num_batched_tokens <= scheduler.max_num_batched_tokens
    assert len(scheduler.running) <= scheduler.max_num_seqs
    for s in output.scheduled:
        end = s.num_computed_tokens + s.num_new_tokens
        assert s.num_new_tokens > 0 and end <= s.request.num_tokens
        assert s.sample == (end == s.request.num_tokens)
        assert len(s.request.block_ids) * manager.block_size >= end
    owners = [0] * manager.num_blocks
    for request in scheduler.running:
        for block in request.block_ids:
            owners[block] += 1
    for request in scheduler.waiting:
        assert request.block_ids == []
    assert owners == manager.ref_counts
    check_block_invariants(manager)


@pytest.mark.parametrize("seed", range(6))
def test_random_soak_every_request_completes_and_every_block_returns(seed: int) -> None:
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4])
    scheduler = make_scheduler(
        num_blocks=rng.randint(40 // block_size, 80 // block_size),
        block_size=block_size,
        max_num_seqs=rng.randint(2, 8),
        budget=rng.randint(4, 40),
        prefix=rng.random() < 0.8,
    )
    model = FakeKVModel(block_size)
    expected: dict[str, int] = {}
    requests: list[Request] = []
    aborted: set[str] = set()

    def token_for(request: Request) -> int:
        return 100 + request.num_output_tokens  # so output == range(100, 100 + len)

    for step_index in range(600):
        if rng.random() < 0.35 and len(requests) < 60:
            max_tokens = rng.randint(1, 12)
            stop_at = rng.choice([None, rng.randint(1, 12)])
            prompt = [rng.choice([5, 6, 7]) for _ in range(rng.randint(1, 36))]  # shared prefixes
            params = SamplingParams(
                max_tokens=max_tokens,
                ignore_eos=True,
                stop_token_ids=[] if stop_at is None else [99 + stop_at],
            )
            request = Request(f"q{len(requests)}", prompt, params, max_model_len=40)
            scheduler.add_request(request)
            requests.append(request)
            natural = min(max_tokens, 40 - len(prompt))
            expected[request.request_id] = natural if stop_at is None else min(stop_at, natural)
        output = scheduler.schedule()
        check_step(scheduler, output)
        model.run(output)
        if rng.random() < 0.06 and scheduler.requests:  # also lands between schedule and update
            victim = rng.choice(sorted(scheduler.requests))
            assert scheduler.abort_request(victim)
            aborted.add(victim)
        sampled = [token_for(s.request) for s in output.sampling_requests]
        scheduler.update(output, sampled)
        if step_index > 300 and not scheduler.has_unfinished_requests():
            break
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        check_step(scheduler, output)
        model.run(output)
        scheduler.update(output, [token_for(s.request) for s in output.sampling_requests])
    assert len(requests) > 20
    for request in requests:
        assert request.is_finished
        if request.request_id in aborted:
            assert request.finish_reason == "abort"
            continue
        assert request.output_token_ids == list(range(100, 100 + expected[request.request_id]))
        assert request.finish_reason in ("stop", "length")
    assert scheduler.requests == {} and scheduler.num_waiting == scheduler.num_running == 0
    assert_all_free(scheduler)


def test_soak_preempts_under_a_tiny_cache() -> None:
    rng = random.Random(7)
    scheduler = make_scheduler(num_blocks=13, block_size=2, max_num_seqs=6, budget=16)
    model = FakeKVModel(2)
    requests = []
    for i in range(30):
        prompt = [rng.randint(1, 4) for _ in range(rng.randint(1, 12))]
        request = Request(f"p{i}", prompt, SamplingParams(max_tokens=10, ignore_eos=True))
        scheduler.add_request(request)
        requests.append(request)
    steps = 0
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        check_step(scheduler, output)
        model.run(output)
        scheduler.update(
            output, [100 + s.request.num_output_tokens for s in output.sampling_requests]
        )
        steps += 1
        assert steps < 5000
    assert scheduler.num_preemptions_total > 0
    assert any(r.num_preemptions > 0 for r in requests)
    for request in requests:
        assert request.output_token_ids == list(range(100, 110))
    assert_all_free(scheduler)
