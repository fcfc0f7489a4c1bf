"""Fixed-size KV blocks: free list, ref counts, and a prefix cache of full blocks (LRU)."""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence

from gpt2serve.server.core.request import Request

NULL_BLOCK = 0

# Mixed into every chain of block keys, so that no one can predict them from outside the process.
_PROCESS_HASH_SEED = os.urandom(16)


def hash_block(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """Prefix-cache key of one full block: SHA-256 over its parent's key and its token ids.

    Collision-resistant, unlike the builtin `hash` of a tuple of ints, which is deterministic and
    64 bits wide: prompts can be crafted whose blocks share a key (vLLM's CVE-2025-25183). The
    parent key has a fixed width and the ids are packed as int64, so the input is unambiguous.
    """
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


class BlockManager:
    """Hands out KV blocks to requests; full blocks are shared by prefix hash.

    Block 0 is the null block (padding for the model runner) and is never handed out. A block
    whose ref count drops to 0 but that carries a hash moves to an LRU pool: it is still
    reusable by a later prefix match, and it is the last kind of block to be reallocated.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        hash_seed: bytes | None = None,
    ) -> None:
        """`hash_seed` (default: random per process) is mixed into every block key."""
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (block 0 is reserved), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(NULL_BLOCK + 1, num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0, hashed; oldest first
        seed = _PROCESS_HASH_SEED if hash_seed is None else hash_seed
        self._root_hash = hashlib.sha256(b"gpt2serve prefix cache root" + seed).digest()
        self._hash_to_block: dict[bytes, int] = {}
        self._block_hash: dict[int, bytes] = {}
        # What each cached block's key was computed from, checked on every hit: a hit whose
        # parent key or token ids differ (a key collision) is a miss.
        self._block_key_input: dict[int, tuple[bytes, tuple[int, ...]]] = {}
        self._request_hashes: dict[str, list[bytes]] = {}
        # Copy-on-write (src, dst) pairs decided by `allocate` since the last `take_copies`.
        self._pending_copies: list[tuple[int, int]] = []
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    @property
    def num_usable_blocks(self) -> int:
        """Blocks that can ever be handed out."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no owner (truly free, or cached and evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by some request."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def _chain_hashes(self, token_ids: list[int], start: list[bytes], num_full: int) -> list[bytes]:
        """Hashes of the first `num_full` full blocks, extending an existing chain."""
        hashes = list(start[:num_full])
        bs = self.block_size
        for i in range(len(hashes), num_full):
            parent = hashes[-1] if hashes else self._root_hash
            hashes.append(hash_block(parent, token_ids[i * bs : (i + 1) * bs]))
        return hashes

    def get_computed_blocks(self, token_ids: list[int]) -> list[int]:
        """Cached blocks matching the longest full-block prefix, leaving >= 1 token to compute."""
        if not self.enable_prefix_caching:
            return []
        max_blocks = (len(token_ids) - 1) // self.block_size
        blocks: list[int] = []
        parent = self._root_hash
        bs = self.block_size
        for i in range(max_blocks):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            key = hash_block(parent, tokens)
            block = self._hash_to_block.get(key)
            if block is None or self._block_key_input[block] != (parent, tokens):
                break
            blocks.append(block)
            parent = key
        return blocks

    def record_prefix_query(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        """Count one prefix-cache lookup (in tokens, like vLLM)."""
        self.prefix_cache_queries += num_query_tokens
        self.prefix_cache_hits += num_hit_tokens

    def _num_needed(self, request: Request, num_new_tokens: int, num_computed_blocks: int) -> int:
        total_tokens = request.num_computed_tokens + num_new_tokens
        if num_computed_blocks:
            total_tokens = num_computed_blocks * self.block_size + num_new_tokens
        num_blocks_total = -(-total_tokens // self.block_size)
        return max(0, num_blocks_total - len(request.block_ids) - num_computed_blocks)

    def _shared_tail_index(self, request: Request, num_new_tokens: int) -> int | None:
        """The block this step writes into that another beam also holds, if any.

        Only a partly filled last block can be shared and written: full blocks are never
        written again, and ordinary requests share full blocks only.
        """
        start = request.num_computed_tokens
        index = start // self.block_size
        if num_new_tokens == 0 or start % self.block_size == 0 or index >= len(request.block_ids):
            return None
        return index if self.ref_counts[request.block_ids[index]] > 1 else None

    def can_allocate(
        self, request: Request, num_new_tokens: int, computed_block_ids: list[int] | tuple = ()
    ) -> bool:
        """Whether `allocate` would succeed now."""
        needed = self._num_needed(request, num_new_tokens, len(computed_block_ids))
        if not computed_block_ids and self._shared_tail_index(request, num_new_tokens) is not None:
            needed += 1  # the copy of the shared block
        reused_evictable = sum(1 for b in computed_block_ids if b in self._evictable)
        return needed <= self.num_free_blocks - reused_evictable

    def allocate(
        self, request: Request, num_new_tokens: int, computed_block_ids: list[int] | tuple = ()
    ) -> bool:
        """Grow the request's block table to cover this step; False (no change) if out of blocks."""
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        if computed_block_ids and request.block_ids:
            raise ValueError("computed_block_ids only apply to a request's first allocation")
        if not self.can_allocate(request, num_new_tokens, computed_block_ids):
            return False
        num_needed = self._num_needed(request, num_new_tokens, len(computed_block_ids))
        shared = None if computed_block_ids else self._shared_tail_index(request, num_new_tokens)
        if shared is not None:  # copy-on-write: this beam gets its own copy to append into
            source = request.block_ids[shared]
            request.block_ids[shared] = self._pop_free_block()
            self.ref_counts[source] -= 1  # still held by the beam it was shared with
            self._pending_copies.append((source, request.block_ids[shared]))
        for block in computed_block_ids:
            self._take_ref(block)
        request.block_ids.extend(computed_block_ids)
        for _ in range(num_needed):
            request.block_ids.append(self._pop_free_block())
        if computed_block_ids:
            start = len(computed_block_ids) * self.block_size
        else:
            start = request.num_computed_tokens
        self._register_full_blocks(request, start + num_new_tokens)
        return True

    def fork(self, parent: Request, child: Request) -> None:
        """Give `child` (a beam forked from `parent`) the parent's blocks, shared by reference."""
        if child.block_ids:
            raise ValueError(f"request {child.request_id!r} already holds blocks")
        for block in parent.block_ids:
            self._take_ref(block)
        child.block_ids = list(parent.block_ids)
        if parent.request_id in self._request_hashes:
            self._request_hashes[child.request_id] = list(self._request_hashes[parent.request_id])

    def take_copies(self) -> list[tuple[int, int]]:
        """The (src, dst) block copies to run before this step's forward pass; clears them."""
        copies, self._pending_copies = self._pending_copies, []
        return copies

    def free(self, request: Request) -> None:
        """Release every block of the request; tail blocks become the first to be evicted."""
        # Hashes are registered at schedule time, before the forward pass writes the blocks. A
        # request freed between schedule and update (an abort) may own hashed blocks the model
        # never filled; its num_computed_tokens has not moved past them, so unhash those.
        num_written_blocks = request.num_computed_tokens // self.block_size
        for index in range(len(request.block_ids) - 1, -1, -1):
            block = request.block_ids[index]
            if index >= num_written_blocks and block in self._block_hash:
                self._unhash(block)
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if block in self._block_hash:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        request.block_ids = []
        self._request_hashes.pop(request.request_id, None)

    def _take_ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            self._evictable.pop(block, None)
        self.ref_counts[block] += 1

    def _pop_free_block(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            self._unhash(block)
        self.ref_counts[block] = 1
        return block

    def _unhash(self, block: int) -> None:
        del self._hash_to_block[self._block_hash.pop(block)]
        del self._block_key_input[block]

    def _register_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Hash blocks that are full once this step runs; reusing them within the same step is safe.

        Within one forward pass every layer writes all new K/V rows before any attention reads
        them (docs/ARCHITECTURE.md, "n > 1").
        """
        if not self.enable_prefix_caching:
            return
        num_full = min(num_tokens, len(request.all_token_ids)) // self.block_size
        known = self._request_hashes.get(request.request_id, [])
        if num_full <= len(known):
            return
        hashes = self._chain_hashes(request.all_token_ids, known, num_full)
        bs = self.block_size
        for i in range(len(known), num_full):
            block = request.block_ids[i]
            if hashes[i] not in self._hash_to_block and block not in self._block_hash:
                self._hash_to_block[hashes[i]] = block
                self._block_hash[block] = hashes[i]
                parent = hashes[i - 1] if i else self._root_hash
                tokens = tuple(request.all_token_ids[i * bs : (i + 1) * bs])
                self._block_key_input[block] = (parent, tokens)
        self._request_hashes[request.request_id] = hashes
