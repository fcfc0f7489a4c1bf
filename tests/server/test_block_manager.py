"""Block manager without a model: allocation, ref counts, prefix cache, LRU eviction."""

from __future__ import annotations

import pytest

from server.block_manager import NULL_BLOCK, BlockManager
from server.request import Request, SamplingParams


def request(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, tokens, SamplingParams(max_tokens=100, ignore_eos=True))


def admit(manager: BlockManager, req: Request, num_new: int | None = None) -> bool:
    """Admit like the scheduler: prefix lookup, allocate, set computed tokens."""
    computed = manager.get_computed_blocks(req.all_token_ids)
    cached = len(computed) * manager.block_size
    ok = manager.allocate(
        req, num_new if num_new is not None else req.num_tokens - cached, computed
    )
    if ok:
        req.num_computed_tokens = cached
    return ok


def test_blocks_cover_tokens_across_boundaries() -> None:
    manager = BlockManager(num_blocks=10, block_size=4)
    req = request("a", list(range(9)))
    assert admit(manager, req)
    assert len(req.block_ids) == 3 and NULL_BLOCK not in req.block_ids
    req.num_computed_tokens = 9
    for expected_blocks in (3, 3, 3, 4):  # tokens 10, 11, 12 fit block 3; token 13 needs a 4th
        req.append_output_token(1)
        assert manager.append_slot(req)
        req.num_computed_tokens += 1
        assert len(req.block_ids) == expected_blocks
    manager.free(req)
    assert manager.num_free_blocks == 9 and req.block_ids == []
    manager.check_invariants()


def test_out_of_blocks_changes_nothing() -> None:
    manager = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    big = request("big", list(range(12)))
    assert admit(manager, big)
    other = request("other", [1, 2])
    assert not manager.can_allocate(other, 2)
    assert not admit(manager, other)
    assert other.block_ids == [] and manager.num_free_blocks == 0
    manager.check_invariants()


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
    assert admit(manager, second)
    assert second.num_computed_tokens == 8 and second.block_ids[:2] == first.block_ids[:2]
    assert [manager.ref_counts[b] for b in first.block_ids[:2]] == [2, 2]
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 15
    third = request("third", prompt)
    assert len(manager.get_computed_blocks(third.all_token_ids)) == 2
    assert admit(manager, third) and third.num_computed_tokens == 8
    manager.free(third)
    manager.check_invariants()


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
    manager.check_invariants()


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
