"""Block-manager invariants, checked from outside: the shipped class carries no test helpers."""

from __future__ import annotations

from gpt2serve.server.core.block_manager import NULL_BLOCK, BlockManager


def check_block_invariants(manager: BlockManager) -> None:
    """Assert that free list, evictable pool, hash maps and ref counts agree."""
    free = set(manager._free)
    evictable = manager._evictable
    assert len(free) == len(manager._free), "duplicate block in free list"
    assert not free & set(evictable), "block both free and evictable"
    assert NULL_BLOCK not in free and NULL_BLOCK not in evictable
    assert manager.ref_counts[NULL_BLOCK] == 0, "the null block was handed out"
    assert all(b in manager._block_hash for b in evictable), "unhashed block cached"
    assert len(manager._hash_to_block) == len(manager._block_hash), "hash maps disagree"
    for block_hash, block in manager._hash_to_block.items():
        assert manager._block_hash.get(block) == block_hash, f"block {block} hash mismatch"
    for block in range(1, manager.num_blocks):
        owned = manager.ref_counts[block] > 0
        assert owned != (block in free or block in evictable), f"block {block} state"
        assert manager.ref_counts[block] >= 0
