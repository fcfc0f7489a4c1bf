"""Helpers for driving the scheduler without a model: fake token ids and block checks."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from gpt2serve.server.core.block_manager import BlockManager
from gpt2serve.server.core.messages import SchedulerOutput
from gpt2serve.server.core.request import Request
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.core.scheduler import Scheduler
from support.block_checks import check_block_invariants

TokenFor = Callable[[Request], int]


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    budget: int = 64,
    prefix: bool = True,
) -> Scheduler:
    """A scheduler over a fresh block manager; `budget` is max_num_batched_tokens."""
    manager = BlockManager(num_blocks, block_size, prefix)
    return Scheduler(manager, max_num_seqs, budget)


def make_request(rid: str, prompt_len: int, max_tokens: int = 5, **params: object) -> Request:
    """A request with a prompt derived from its id (stable across runs), ignoring EOS."""
    start = zlib.crc32(rid.encode())
    prompt = [1000 + (start + i) % 5000 for i in range(prompt_len)]
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params))


def fake_token(request: Request) -> int:
    """The "model": output i of every request is 7 + i."""
    return 7 + request.num_output_tokens


def step(
    scheduler: Scheduler, token_for: TokenFor = fake_token
) -> tuple[SchedulerOutput, list[Request]]:
    """One schedule + update with fake tokens."""
    output = scheduler.schedule()
    sampled = [token_for(s.request) for s in output.sampling_requests]
    return output, scheduler.update(output, sampled)


def run_all(scheduler: Scheduler, max_steps: int = 10_000, token_for: TokenFor = fake_token) -> int:
    """Step until nothing is left; returns the number of steps."""
    steps = 0
    while scheduler.has_unfinished_requests():
        step(scheduler, token_for)
        steps += 1
        assert steps < max_steps
    return steps


def held_blocks(scheduler: Scheduler) -> int:
    """Blocks not on the free list."""
    manager = scheduler.block_manager
    return manager.num_usable_blocks - manager.num_free_blocks


def assert_all_free(scheduler: Scheduler) -> None:
    """Every block is back on the free list and no ref count is left."""
    manager = scheduler.block_manager
    check_block_invariants(manager)
    assert manager.num_free_blocks == manager.num_usable_blocks
    assert all(count == 0 for count in manager.ref_counts)
