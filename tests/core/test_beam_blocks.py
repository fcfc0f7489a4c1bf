"""Beams without a model: forks share blocks, appends copy a shared block first, groups unblock."""

from __future__ import annotations

import pytest

from gpt2serve.server.core.request import Request
from support.block_checks import check_block_invariants
from support.scheduler_driver import (
    assert_all_free,
    held_blocks,
    make_request,
    make_scheduler,
    step,
)


def running_beam(scheduler, rid: str, prompt_len: int) -> Request:
    """A beam whose prompt is computed, as the group has it when it forks."""
    beam = make_request(rid, prompt_len, max_tokens=20, use_beam_search=True, best_of=4, n=4)
    beam.beam_score = 0.0
    scheduler.add_request(beam)
    step(scheduler)  # its prefill: a beam appends nothing, it only reports candidates
    assert beam.num_computed_tokens == prompt_len and beam.num_output_tokens == 0
    return beam


def fork_all(scheduler, parents: list[Request], tokens: list[tuple[int, int]]) -> list[Request]:
    forks = [(parents[p], parents[p].fork(f"c{i}-{p}-{t}", t, -1.0)) for i, (p, t) in
             enumerate(tokens)]  # fmt: skip
    scheduler.replace_beams(parents, forks)
    return [child for _, child in forks]


def test_forked_beams_share_blocks_and_copy_the_partial_one_on_write() -> None:
    scheduler = make_scheduler(block_size=4, prefix=False)
    root = running_beam(scheduler, "root", 10)  # blocks: 4 + 4 + 2 tokens
    assert held_blocks(scheduler) == 3
    children = fork_all(scheduler, [root], [(0, 11), (0, 12), (0, 13)])
    manager = scheduler.block_manager
    assert held_blocks(scheduler) == 3  # shared by reference, parent dropped
    assert [manager.ref_counts[b] for b in children[0].block_ids] == [3, 3, 3]
    shared_tail = children[0].block_ids[2]
    output = scheduler.schedule()  # each child writes its token into the shared third block
    assert len(output.block_copies) == 2  # two copies; the last holder writes in place
    assert {src for src, _ in output.block_copies} == {shared_tail}
    assert children[2].block_ids[2] == shared_tail
    assert len({c.block_ids[2] for c in children}) == 3  # now three distinct tail blocks
    assert all(c.block_ids[:2] == children[0].block_ids[:2] for c in children)
    assert held_blocks(scheduler) == 5
    check_block_invariants(manager)
    assert manager.take_copies() == []  # handed out once


def test_a_fork_at_a_block_boundary_copies_nothing() -> None:
    scheduler = make_scheduler(block_size=4, prefix=False)
    root = running_beam(scheduler, "root", 8)  # two full blocks
    fork_all(scheduler, [root], [(0, 1), (0, 2)])
    output = scheduler.schedule()
    assert output.block_copies == [] and held_blocks(scheduler) == 4


def test_dropped_beams_free_blocks_only_they_held() -> None:
    scheduler = make_scheduler(block_size=4, prefix=False)
    root = running_beam(scheduler, "root", 6)
    first = fork_all(scheduler, [root], [(0, 1), (0, 2)])
    step(scheduler)  # both compute their token (one copy-on-write)
    second = fork_all(scheduler, first, [(0, 3), (0, 4)])  # beam 1's line dies out
    assert all(c.all_token_ids[6] == 1 for c in second)
    for child in second:
        scheduler.abort_request(child.request_id)
    assert_all_free(scheduler)


def test_replace_beams_refuses_a_parent_that_is_not_running() -> None:
    scheduler = make_scheduler()
    root = running_beam(scheduler, "root", 5)
    stranger = make_request("x", 3)
    with pytest.raises(ValueError, match="running"):
        scheduler.replace_beams([root, stranger], [(root, root.fork("c", 1, 0.0))])


def test_idle_beams_holding_blocks_yield_to_the_waiting_head() -> None:
    # Beam "a" has scored its candidates (nothing to compute) and waits for its sibling, which
    # waits for blocks "a" holds: the scheduler preempts the idle beam behind that sibling.
    scheduler = make_scheduler(num_blocks=6, block_size=4, prefix=False)  # 5 usable blocks
    idle = running_beam(scheduler, "a", 12)  # 3 blocks
    sibling = make_request("b", 12, use_beam_search=True, best_of=4, n=4)  # needs 3 more
    sibling.beam_score = 0.0
    scheduler.add_request(sibling)
    output = scheduler.schedule()
    assert output.preempted_request_ids == ["a"]
    assert [s.request.request_id for s in output.scheduled] == ["b"]
    assert list(scheduler.waiting) == [idle] and idle.num_computed_tokens == 0
