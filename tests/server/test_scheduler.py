"""Scheduler without a model: budgets, chunked prefill, FCFS, preemption, prefix hits, aborts."""

from __future__ import annotations

import random

import pytest

from server.block_manager import NULL_BLOCK, BlockManager
from server.request import Request, RequestStatus, SamplingParams
from server.scheduler import Scheduler, SchedulerOutput

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


def test_resume_after_preemption_keeps_first_num_cached_tokens() -> None:
    scheduler = make_scheduler(num_blocks=7, budget=64)
    a = make_request("a", 8, max_tokens=12)
    b = make_request("b", 8, max_tokens=12)
    scheduler.add_request(a)
    scheduler.add_request(b)
    run_all(scheduler)
    assert b.num_preemptions > 0 and b.num_cached_tokens == 0  # resume hits are not counted


def test_add_request_rejects_what_can_never_run() -> None:
    scheduler = make_scheduler(num_blocks=5, block_size=4, max_model_len=64)  # 16 token slots
    with pytest.raises(ValueError, match="empty"):
        scheduler.add_request(Request("empty", [], SamplingParams()))
    with pytest.raises(ValueError, match="max_model_len"):
        scheduler.add_request(make_request("long", 65))
    with pytest.raises(ValueError, match="KV blocks"):
        scheduler.add_request(make_request("big", 10, max_tokens=8))  # 17 slots
    scheduler.add_request(make_request("fits", 10, max_tokens=7))  # 16 slots, exactly
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
    assert scheduler.get_request("a") is not None and scheduler.get_request("zz") is None
    assert not scheduler.abort_request("zz")


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
    manager.check_invariants()


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
