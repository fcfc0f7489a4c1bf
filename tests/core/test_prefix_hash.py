"""Prefix-cache keys: collision-resistant, verified on a hit, seeded per process.

The old keys were the builtin `hash((parent, tuple(block_tokens)))`: deterministic for ints and
only 64 bits wide, with nothing checked on a hit, so one user's prompt could be built to reuse
another user's cached KV (vLLM's CVE-2025-25183).
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from gpt2serve.server.core import block_manager as block_manager_module
from gpt2serve.server.core.block_manager import BlockManager
from gpt2serve.server.core.request import Request
from gpt2serve.server.core.sampling_params import SamplingParams
from support.block_checks import check_block_invariants

# Two different 16-token blocks of valid GPT-2 ids whose builtin tuple hashes are equal, so their
# keys under the old scheme collide after any common prefix. Found offline by a birthday search
# (Pollard's rho with distinguished points, ~2^32 evaluations of CPython's xxHash-based tuple
# hash over the last five ids); the hash of a tuple of small ints is the same in every 64-bit
# CPython >= 3.8, whatever PYTHONHASHSEED says.
PREFIX = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 314]
COLLIDING_A = [*PREFIX, 30758, 11361, 14664, 16495, 1]
COLLIDING_B = [*PREFIX, 16771, 11119, 12716, 1221, 9]
SHARED = list(range(1000, 1016))  # a block both prompts genuinely have in common

old_scheme_hash = pytest.mark.skipif(
    platform.python_implementation() != "CPython" or sys.hash_info.width != 64,
    reason="the collision is of 64-bit CPython's tuple hash",
)


def request(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, tokens, SamplingParams(max_tokens=100, ignore_eos=True))


def admit(manager: BlockManager, req: Request) -> list[int]:
    """Admit like the scheduler (prefix lookup, allocate, compute); return the cached blocks."""
    computed = manager.get_computed_blocks(req.all_token_ids)
    cached = len(computed) * manager.block_size
    assert manager.allocate(req, req.num_tokens - cached, computed)
    req.num_computed_tokens = req.num_tokens
    return computed


def check_key_inputs(manager: BlockManager) -> None:
    check_block_invariants(manager)
    assert manager._block_key_input.keys() == manager._block_hash.keys()


def old_key(parent: int | None, tokens: list[int]) -> int:
    return hash((parent, tuple(tokens)))


@old_scheme_hash
def test_blocks_whose_old_keys_collide_are_not_shared() -> None:
    assert COLLIDING_A != COLLIDING_B
    assert max(COLLIDING_A + COLLIDING_B) < 50257
    assert old_key(None, COLLIDING_A) == old_key(None, COLLIDING_B)
    parent = old_key(None, SHARED)
    assert old_key(parent, COLLIDING_A) == old_key(parent, COLLIDING_B)

    manager = BlockManager(num_blocks=16, block_size=16)
    # As a prompt's first block: the old key alone would hand over the victim's block.
    victim = request("victim", [*COLLIDING_A, 7])
    admit(manager, victim)
    attacker = request("attacker", [*COLLIDING_B, 7])
    assert admit(manager, attacker) == []
    assert attacker.block_ids[0] != victim.block_ids[0]
    # After a genuinely shared block: only that one is reused, not the colliding one after it.
    victim = request("victim 2", [*SHARED, *COLLIDING_A, 7])
    admit(manager, victim)
    attacker = request("attacker 2", [*SHARED, *COLLIDING_B, 7])
    assert admit(manager, attacker) == victim.block_ids[:1]
    assert attacker.block_ids[1] != victim.block_ids[1]
    check_key_inputs(manager)
    # The victim's own prompt still finds both of its blocks.
    assert manager.get_computed_blocks(victim.all_token_ids) == victim.block_ids[:2]


def test_a_key_collision_is_a_miss(monkeypatch) -> None:
    """Every key equal: only the parent and token ids stored with the block tell them apart."""
    monkeypatch.setattr(block_manager_module, "hash_block", lambda parent, tokens: b"\0" * 32)
    manager = BlockManager(num_blocks=8, block_size=4)
    victim = request("victim", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    admit(manager, victim)
    assert manager.get_computed_blocks([9, 9, 9, 9, 9]) == []
    assert manager.get_computed_blocks([1, 2, 3, 5, 9]) == []  # one id off
    assert manager.get_computed_blocks([1, 2, 3, 4, 9]) == victim.block_ids[:1]
    other = request("other", [9, 9, 9, 9, 9])
    assert admit(manager, other) == []
    assert set(other.block_ids).isdisjoint(victim.block_ids)
    check_key_inputs(manager)


def test_a_collision_with_a_different_parent_is_a_miss(monkeypatch) -> None:
    """Same block tokens after a different prefix: the stored parent key must match too."""

    def key(parent: bytes, tokens) -> bytes:  # keys that ignore the parent
        return bytes(tokens) + b"\0" * 28

    monkeypatch.setattr(block_manager_module, "hash_block", key)
    manager = BlockManager(num_blocks=8, block_size=4)
    victim = request("victim", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    admit(manager, victim)
    assert manager.get_computed_blocks([5, 6, 7, 8, 9]) == []
    assert manager.get_computed_blocks([1, 2, 3, 4, 5, 6, 7, 8, 9]) == victim.block_ids[:2]


def test_same_prompt_hits_the_cache_while_held_and_after_free() -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    tokens = list(range(100, 113))  # 3 full blocks and one token
    first = request("first", tokens)
    assert admit(manager, first) == []
    second = request("second", tokens)
    assert admit(manager, second) == first.block_ids[:3]
    assert [manager.ref_counts[b] for b in first.block_ids[:3]] == [2, 2, 2]
    cached = first.block_ids[:3]
    manager.free(first)
    manager.free(second)
    assert manager.get_computed_blocks(tokens) == cached  # now evictable, still cached
    assert manager.get_computed_blocks([*tokens[:8], 0, *tokens[9:]]) == cached[:2]
    check_key_inputs(manager)


def block_keys(manager: BlockManager, tokens: list[int]) -> list[bytes]:
    return manager._chain_hashes(tokens, [], len(tokens) // manager.block_size)


def test_the_seed_is_mixed_into_every_key() -> None:
    tokens = list(range(32))
    one, same, other = (BlockManager(4, 16, hash_seed=s) for s in (b"a" * 16, b"a" * 16, b"b" * 16))
    keys = block_keys(one, tokens)
    assert len(keys) == 2 and all(len(k) == 32 for k in keys)
    assert block_keys(same, tokens) == keys
    assert set(block_keys(other, tokens)).isdisjoint(keys)
    # The default seed is this process's: shared by its managers, unlike any fixed seed.
    assert block_keys(BlockManager(4, 16), tokens) == block_keys(BlockManager(4, 16), tokens)
    assert block_keys(BlockManager(4, 16), tokens) != keys


def test_keys_differ_across_processes() -> None:
    script = (
        "from gpt2serve.server.core.block_manager import BlockManager\n"
        "print(BlockManager(4, 16)._chain_hashes(list(range(16)), [], 1)[0].hex())\n"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        for _ in range(2)
    }
    keys.add(block_keys(BlockManager(4, 16), list(range(16)))[0].hex())
    assert len(keys) == 3
