"""Block manager without a model: allocation, ref counts, prefix cache, LRU eviction."""

from __future__ import annotations

import pytest

from gpt2serve.server.core.block_manager import NULL_BLOCK, BlockManager
from gpt2serve.server.core.request import Request
from gpt2serve.server.core.sampling_params import SamplingParams
from support.block_checks import check_block_invariants


def request(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, tokens, SamplingParams(max_tokens=100, ignore_eos=True))


def admit(manager: BlockManager, req: Request, num_new: int | None = None) -> bool:
    """Admit like the scheduler (prefix lookup, allocate), then mark the step as computed."""
    computed = manager.get_computed_blocks(req.all_token_ids)
    cached = len(computed) * manager.block_size
    num_new = req.num_tokens - cached if num_new is None else num_new
    ok = manager.allocate(req, num_new, computed)
    if ok:
        req.num_computed_tokens = cached + num_new  # as Scheduler.update does after the step
    return ok


def test_blocks_cover_tokens_across_boundaries() -> None:
    manager = BlockManager(num_blocks=10, block_size=4)
    req = request("a", list(range(9)))
    assert admit(manager, req)
    assert len(req.block_ids) == 3 and NULL_BLOCK not in req.block_ids
    req.num_computed_tokens = 9
    for expected_blocks in (3, 3, 3, 4):  # tokens 10, 11, 12 fit block 3; token 13 needs a 4th
        req.append_output_token(1)
        assert manager.allocate(req, 1)
        req.num_computed_tokens += 1
        assert len(req.block_ids) == expected_blocks
    manager.free(req)
    assert manager.num_free_blocks == 9 and req.block_ids == []
    check_block_invariants(manager)


def test_out_of_blocks_changes_nothing() -> None:
    manager = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    big = request("big", list(range(12)))
    assert admit(manager, big)
    other = request("other", [1, 2])
    assert not manager.can_allocate(other, 2)
    assert not admit(manager, other)
    assert other.block_ids == [] and manager.num_free_blocks == 0
    check_block_invariants(manager)


def test_null_block_is_never_handed_out() -> None:
    manager = BlockManager(num_blocks=3, block_size=1, enable_prefix_caching=False)
    req = request("a", [5, 6])
    assert admit(manager, req) and sorted(req.block_ids) == [1, 2]


def test_prefix_hit_after_free_and_shared_refs() -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    first = request("first", prompt)
    assert admit(manager, first)
    second = request("second", [*prompt, 7])
    computed = manager.get_computed_blocks(second.all_token_ids)
    assert computed == first.block_ids[:2]
    assert admit(manager, second, num_new=3)
    assert second.num_computed_tokens == 11 and second.block_ids[:2] == first.block_ids[:2]
    assert [manager.ref_counts[b] for b in first.block_ids[:2]] == [2, 2]
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 15
    third = request("third", prompt)
    assert len(manager.get_computed_blocks(third.all_token_ids)) == 2
    assert admit(manager, third) and third.num_computed_tokens == 10
    manager.free(third)
    check_block_invariants(manager)


def test_at_least_one_token_is_left_to_compute() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(8))  # exactly two blocks
    assert admit(manager, request("a", prompt))
    assert len(manager.get_computed_blocks(prompt)) == 1


def test_lru_evicts_the_oldest_cached_block_first() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)  # 3 usable blocks
    old = request("old", [1, 2, 9])
    assert admit(manager, old)
    manager.free(old)
    new = request("new", [3, 4, 9])
    assert admit(manager, new)
    manager.free(new)
    # both cached prefixes are still there
    assert manager.get_computed_blocks([1, 2, 9]) and manager.get_computed_blocks([3, 4, 9])
    big = request("big", [5, 6, 7, 8, 9])  # needs all 3 blocks: evicts both cached ones
    assert admit(manager, big)
    assert manager.get_computed_blocks([1, 2, 9]) == []
    manager.free(big)
    check_block_invariants(manager)


def test_usage_and_stats() -> None:
    manager = BlockManager(num_blocks=5, block_size=4)
    req = request("a", list(range(8)))
    assert admit(manager, req)
    assert manager.usage == pytest.approx(0.5)
    manager.record_prefix_query(8, 4)
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (8, 4)
    manager.free(req)
    assert manager.usage == 0.0


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(1)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, 0)


def test_lru_eviction_order_oldest_request_first_and_tail_first() -> None:
    manager = BlockManager(num_blocks=6, block_size=2)  # 5 usable blocks
    old = request("old", [1, 2, 3, 4, 9])  # 2 full blocks + 1 partial
    assert admit(manager, old)
    old_head, old_tail = old.block_ids[:2]
    manager.free(old)
    new = request("new", [5, 6, 9])  # 1 full block + 1 partial
    assert admit(manager, new)
    manager.free(new)
    assert manager.num_free_blocks == 5
    # 2 plainly free blocks go first, then the 3rd allocation evicts the oldest cached block:
    # the tail of "old" (freed in reverse, so its tail is older than its head).
    taker = request("taker", [7, 7, 7, 7, 7])
    assert admit(manager, taker, num_new=5)
    assert old_tail in taker.block_ids and old_head not in taker.block_ids
    assert manager.get_computed_blocks([1, 2, 3, 4, 9]) == [old_head]  # chain cut at the tail
    assert len(manager.get_computed_blocks([5, 6, 9])) == 1  # the newer prefix survives
    manager.free(taker)
    check_block_invariants(manager)


def test_can_allocate_does_not_count_reused_cached_blocks_twice() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)  # 3 usable blocks
    first = request("first", [1, 2, 3, 4, 5])
    assert admit(manager, first)  # 3 blocks, 2 of them full and cached
    manager.free(first)
    assert manager.num_free_blocks == 3  # 1 plainly free + 2 evictable
    again = request("again", [1, 2, 3, 4, 5, 6, 7, 8])
    computed = manager.get_computed_blocks(again.all_token_ids)
    assert len(computed) == 2
    # 2 reused + needs 2 more, but only 1 block is neither free-listed nor being reused.
    assert not manager.can_allocate(again, 4, computed)
    assert not manager.allocate(again, 4, computed)
    assert again.block_ids == [] and manager.num_free_blocks == 3
    assert all(count == 0 for count in manager.ref_counts)
    assert manager.can_allocate(again, 2, computed) and manager.allocate(again, 2, computed)
    assert again.block_ids[:2] == computed and len(again.block_ids) == 3
    manager.free(again)
    check_block_invariants(manager)


def test_hashes_registered_at_schedule_time_and_dropped_if_never_written() -> None:
    manager = BlockManager(num_blocks=8, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    first = request("first", prompt)
    assert manager.allocate(first, 5)  # scheduled, not yet run
    # Same step: a sibling already sees the two full blocks (written before attention reads).
    assert manager.get_computed_blocks(prompt) == first.block_ids[:2]
    manager.free(first)  # aborted before the step ran: its blocks hold no K/V
    assert manager.get_computed_blocks(prompt) == []
    assert manager.num_free_blocks == 7
    check_block_invariants(manager)


def test_decode_hashes_each_block_as_it_fills() -> None:
    manager = BlockManager(num_blocks=8, block_size=2)
    req = request("a", [1, 2, 3])
    assert admit(manager, req)
    for token in (4, 5):
        req.append_output_token(token)
        assert manager.allocate(req, 1)
        req.num_computed_tokens += 1
    manager.free(req)
    assert len(manager.get_computed_blocks([1, 2, 3, 4, 5, 6])) == 2  # [1,2], [3,4]
    assert len(manager.get_computed_blocks([1, 2, 3, 4, 5])) == 2


def test_prefix_caching_disabled_never_hits() -> None:
    manager = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    req = request("a", [1, 2, 3, 4, 5])
    assert admit(manager, req)
    manager.free(req)
    assert manager.get_computed_blocks([1, 2, 3, 4, 5]) == []


def test_free_is_idempotent() -> None:
    manager = BlockManager(num_blocks=8, block_size=2)
    req = request("a", [1, 2, 3, 4, 5])
    assert admit(manager, req)
    manager.free(req)
    manager.free(req)
    assert manager.num_free_blocks == 7 and all(c == 0 for c in manager.ref_counts)
    check_block_invariants(manager)


def test_computed_blocks_only_on_first_allocation() -> None:
    manager = BlockManager(num_blocks=8, block_size=2)
    first = request("first", [1, 2, 3])
    assert admit(manager, first)
    other = request("other", [1, 2, 3])
    assert admit(manager, other, num_new=1)
    with pytest.raises(ValueError, match="first allocation"):
        manager.allocate(other, 1, first.block_ids[:1])
