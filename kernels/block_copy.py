"""Block copy for copy-on-write: a forked sequence's shared, partly filled block gets a copy.

Beam search forks a sequence by sharing its blocks; before a fork appends into a shared block
that is only partly filled, the block is copied to a fresh one, in every layer's K and V cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _copy_blocks_kernel(
    key_cache_ptr,
    value_cache_ptr,
    block_mapping_ptr,
    block_numel,  # block_size * n_head * head_dim: one block, contiguous in the cache
    BLOCK: tl.constexpr,
):
    """One (pair, chunk of its block): copy the src block's K and V chunk onto the dst block."""
    pair = tl.program_id(0)
    chunk = tl.program_id(1)
    # int64 before the multiply: num_blocks * block_numel can pass 2**31 elements.
    src = tl.load(block_mapping_ptr + 2 * pair).to(tl.int64)
    dst = tl.load(block_mapping_ptr + 2 * pair + 1).to(tl.int64)
    offsets = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < block_numel
    src_offsets = src * block_numel + offsets
    dst_offsets = dst * block_numel + offsets
    key = tl.load(key_cache_ptr + src_offsets, mask=mask)
    value = tl.load(value_cache_ptr + src_offsets, mask=mask)
    tl.store(key_cache_ptr + dst_offsets, key, mask=mask)
    tl.store(value_cache_ptr + dst_offsets, value, mask=mask)


def _check_caches(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor]) -> None:
    """One shape, dtype and device for all caches; contiguous, as the kernel reads flat blocks."""
    if not key_caches or len(key_caches) != len(value_caches):
        raise ValueError(
            "key_caches and value_caches must be non-empty lists of one length, got "
            f"{len(key_caches)} and {len(value_caches)}"
        )
    first = key_caches[0]  # [num_blocks, block_size, n_head, head_dim]
    if first.dim() != 4:
        raise ValueError(
            f"caches must be [num_blocks, block_size, n_head, head_dim], got {tuple(first.shape)}"
        )
    for cache in (*key_caches, *value_caches):
        if cache.shape != first.shape or cache.dtype != first.dtype:
            raise ValueError(
                f"every cache must be {first.dtype} {tuple(first.shape)}, "
                f"got {cache.dtype} {tuple(cache.shape)}"
            )
        if cache.device != first.device:
            raise ValueError(f"every cache must be on {first.device}, got {cache.device}")
        if not cache.is_contiguous():
            raise ValueError(f"every cache must be contiguous, got strides {cache.stride()}")


def _check_mapping(
    block_mapping: torch.Tensor,  # [num_pairs, 2] int64: (src_block, dst_block)
    num_blocks: int,
    device: torch.device,
) -> None:
    """Pairs in range, and no dst written twice or read as a src: programs run in no order."""
    if block_mapping.dim() != 2 or block_mapping.shape[1] != 2:
        raise ValueError(
            f"block_mapping must be [num_pairs, 2] (src, dst), got {tuple(block_mapping.shape)}"
        )
    if block_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_mapping must be int64, got {block_mapping.dtype}")
    if block_mapping.device != device:
        raise ValueError(f"block_mapping must be on {device}, got {block_mapping.device}")
    pairs = block_mapping.cpu()  # [num_pairs, 2]; one sync for every check below
    bad = (pairs < 0) | (pairs >= num_blocks)  # [num_pairs, 2]
    if bool(bad.any()):
        raise ValueError(
            f"block_mapping indexes blocks outside [0, {num_blocks}): {pairs[bad].tolist()}"
        )
    src, dst = pairs[:, 0], pairs[:, 1]  # [num_pairs] each
    if dst.unique().numel() != dst.numel():
        raise ValueError(f"block_mapping writes a dst block twice: {dst.tolist()}")
    reused = dst[torch.isin(dst, src)]  # [num_reused]
    if reused.numel():
        raise ValueError(f"block_mapping reads dst blocks {reused.tolist()} as a src")


def copy_blocks_triton(
    key_caches: list[torch.Tensor],  # n_layer x [num_blocks, block_size, n_head, head_dim]
    value_caches: list[torch.Tensor],  # n_layer x [num_blocks, block_size, n_head, head_dim]
    block_mapping: torch.Tensor,  # [num_pairs, 2] int64: (src_block, dst_block)
) -> None:
    """Same contract as `copy_blocks_reference`; dst blocks must be distinct and not srcs."""
    _check_caches(key_caches, value_caches)
    first = key_caches[0]  # [num_blocks, block_size, n_head, head_dim]
    _check_mapping(block_mapping, first.shape[0], first.device)
    num_pairs = block_mapping.shape[0]
    block_numel = first[0].numel()
    if num_pairs == 0 or block_numel == 0:
        return
    mapping = block_mapping.to(torch.int64).contiguous()  # [num_pairs, 2]
    block = min(1024, triton.next_power_of_2(block_numel))
    grid = (num_pairs, triton.cdiv(block_numel, block))
    # One launch per layer: the caches are separate tensors (or views), so each gets its own
    # base pointer instead of a device-side pointer table.
    for key_cache, value_cache in zip(key_caches, value_caches, strict=True):
        _copy_blocks_kernel[grid](key_cache, value_cache, mapping, block_numel, BLOCK=block)
