"""Triton KV write: scatter this step's K/V rows into their paged-cache slots."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    key_stride_token,
    value_stride_token,
    row_size,  # n_head * head_dim: one token's row, contiguous in both source and cache
    BLOCK: tl.constexpr,
):
    """One (token, chunk of its row): copy key and value into the token's slot."""
    token = tl.program_id(0)
    chunk = tl.program_id(1)
    slot = tl.load(slot_ptr + token)
    offsets = chunk * BLOCK + tl.arange(0, BLOCK)
    # A padding token (slot -1) writes nowhere; its address is clamped to stay in bounds.
    mask = offsets < tl.where(slot >= 0, row_size, 0)
    safe_slot = tl.maximum(slot, 0).to(tl.int64)
    key = tl.load(key_ptr + token * key_stride_token + offsets, mask=mask)
    value = tl.load(value_ptr + token * value_stride_token + offsets, mask=mask)
    dst = safe_slot * row_size + offsets
    tl.store(k_cache_ptr + dst, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _check_row_layout(name: str, tensor: torch.Tensor) -> None:  # [num_tokens, n_head, head_dim]
    """The kernel copies a token's heads as one run of n_head * head_dim elements."""
    head_dim = tensor.shape[2]
    if tensor.stride(2) != 1 or tensor.stride(1) != head_dim:
        raise ValueError(
            f"{name} must have contiguous [n_head, head_dim] rows, got strides {tensor.stride()}"
        )


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, n_head, head_dim]
    value: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64; -1 = skip
) -> None:
    """Same contract as `kernels.reference.write_kv_cache`."""
    if key.shape != value.shape or key.dim() != 3:
        raise ValueError(
            f"key/value must be [num_tokens, n_head, head_dim], got {key.shape}, {value.shape}"
        )
    if k_cache.shape != v_cache.shape or k_cache.shape[2:] != key.shape[1:]:
        raise ValueError(
            f"cache shape {tuple(k_cache.shape)} does not match key rows {tuple(key.shape)}"
        )
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    if slot_mapping.shape != (key.shape[0],) or slot_mapping.dtype not in (
        torch.int32,
        torch.int64,
    ):
        raise ValueError(
            f"slot_mapping must be int64 [{key.shape[0]}], got {slot_mapping.dtype} "
            f"{tuple(slot_mapping.shape)}"
        )
    if len({t.device for t in (key, value, k_cache, v_cache, slot_mapping)}) != 1:
        raise ValueError("key, value, caches and slot_mapping must be on one device")
    _check_row_layout("key", key)
    _check_row_layout("value", value)
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    row_size = key.shape[1] * key.shape[2]
    block = min(1024, triton.next_power_of_2(row_size))
    grid = (num_tokens, triton.cdiv(row_size, block))
    _write_kv_cache_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), value.stride(0), row_size, BLOCK=block,
    )  # fmt: skip
