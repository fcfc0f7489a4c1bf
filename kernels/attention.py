"""Triton paged attention: varlen prefill (flash-attention over pages) and split-K decode."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _kv_offsets(table_ptr, offs_n, n_ok, offs_d, head, block_size, cache_stride_block,
                cache_stride_slot, cache_stride_head):  # fmt: skip
    """Element offsets [BLOCK_N, BLOCK_D] of one head's rows at positions offs_n, via the pages."""
    block_ids = tl.load(table_ptr + offs_n // block_size, mask=n_ok, other=0)  # [BLOCK_N]
    slots = block_ids.to(tl.int64) * cache_stride_block + (offs_n % block_size) * cache_stride_slot
    return slots[:, None] + head * cache_stride_head + offs_d[None, :]


@triton.jit
def _prefill_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
    q_stride_t, q_stride_h, out_stride_t, out_stride_h,
    cache_stride_block, cache_stride_slot, cache_stride_head, table_stride,
    scale, block_size, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One (query tile, head, sequence): online softmax over the pages up to the tile's end."""
    m_block = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = offs_m < q_len
    d_ok = offs_d < head_dim
    q_pos = seq_len - q_len + offs_m  # each new token's position in its sequence
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * q_stride_t + head * q_stride_h + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :], other=0.0,
    )  # fmt: skip
    if UPCAST:  # Triton's CPU interpreter has no bf16 matmul
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Keys past the tile's last query position are masked by causality: stop there. A tile
    # past this sequence's new tokens (the grid is sized by the longest) reads nothing.
    kv_end = tl.minimum(seq_len, seq_len - q_len + (m_block + 1) * BLOCK_M)
    kv_end = tl.where(m_block * BLOCK_M < q_len, kv_end, 0)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = offs_n < seq_len
        kv_offsets = _kv_offsets(block_tables_ptr + seq * table_stride, offs_n, n_ok, offs_d,
                                 head, block_size, cache_stride_block, cache_stride_slot,
                                 cache_stride_head)  # fmt: skip
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_M, BLOCK_N]
        visible = (offs_n[None, :] <= q_pos[:, None]) & n_ok[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        # Rows with nothing visible yet keep m = -inf; exp of (-inf) - (-inf) must not be NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * out_stride_t + head * out_stride_h + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :],
    )  # fmt: skip


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr,
    block_tables_ptr, seq_lens_ptr,
    q_stride_t, q_stride_h, out_stride_t, out_stride_h,
    cache_stride_block, cache_stride_slot, cache_stride_head, table_stride,
    scale, block_size, head_dim, partition_len, n_head,
    NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One (sequence, head, partition): the output, or a partial (max, sum, acc) to reduce."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q = tl.load(q_ptr + seq * q_stride_t + head * q_stride_h + offs_d, mask=d_ok, other=0.0)
    q = q.to(tl.float32)
    start = split * partition_len
    end = tl.minimum(seq_len, start + partition_len)
    # Scalars as fp32 tensors so the loop-carried types stay fixed.
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        kv_offsets = _kv_offsets(block_tables_ptr + seq * table_stride, offs_n, n_ok, offs_d,
                                 head, block_size, cache_stride_block, cache_stride_slot,
                                 cache_stride_head)  # fmt: skip
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.sum(k * q[None, :], 1) * scale  # [BLOCK_N]
        scores = tl.where(n_ok, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 0))
        p = tl.exp(scores - m_new)
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)  # a padding row (seq_len 0) gives zeros
        tl.store(out_ptr + seq * out_stride_t + head * out_stride_h + offs_d,
                 out.to(out_ptr.dtype.element_ty), mask=d_ok)  # fmt: skip
    else:
        # Partial results, normalised; the reduce kernel reweights them by exp(max) * sum.
        part = (seq * n_head + head) * NUM_SPLITS + split
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)
        tl.store(part_out_ptr + part * BLOCK_D + offs_d, out)
        tl.store(part_max_ptr + part, m_i)
        tl.store(part_sum_ptr + part, l_i)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_max_ptr, part_sum_ptr, out_ptr, out_stride_t, out_stride_h, head_dim, n_head,
    NUM_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One (sequence, head): combine the partitions' partial softmaxes."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    base = (seq * n_head + head) * NUM_SPLITS
    splits = tl.arange(0, NUM_SPLITS)
    maxes = tl.load(part_max_ptr + base + splits)  # [NUM_SPLITS]
    sums = tl.load(part_sum_ptr + base + splits)
    global_max = tl.max(maxes, 0)
    weights = tl.where(sums > 0, sums * tl.exp(maxes - global_max), 0.0)
    offs_d = tl.arange(0, BLOCK_D)
    parts = tl.load(part_out_ptr + (base + splits)[:, None] * BLOCK_D + offs_d[None, :])
    out = tl.sum(parts * weights[:, None], 0) / tl.sum(weights, 0)
    tl.store(out_ptr + seq * out_stride_t + head * out_stride_h + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < head_dim)  # fmt: skip


def _check_inputs(
    query: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # [num_seqs]
    query_start_loc: torch.Tensor,  # [num_seqs + 1]
) -> None:
    """Raise ValueError, naming the argument, for layouts the kernels cannot address."""
    if query.dim() != 3 or query.stride(2) != 1:
        raise ValueError("query must be [num_tokens, n_head, head_dim] with unit last stride")
    if k_cache.shape != v_cache.shape or k_cache.shape[2:] != query.shape[1:]:
        raise ValueError(f"cache {tuple(k_cache.shape)} does not match query {tuple(query.shape)}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache must share strides with a unit last stride")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError("block_tables must be [num_seqs, max_blocks] with a unit last stride")
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"query must be fp16, bf16 or fp32, got {query.dtype}")
    if k_cache.dtype != query.dtype or v_cache.dtype != query.dtype:
        raise ValueError(f"cache dtype {k_cache.dtype} differs from query dtype {query.dtype}")
    for name, tensor in (("block_tables", block_tables), ("seq_lens", seq_lens),
                         ("query_start_loc", query_start_loc)):  # fmt: skip
        if tensor.dtype not in (torch.int32, torch.int64) or tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be int32/int64 with a unit last stride")
    num_seqs = seq_lens.shape[0]
    if query_start_loc.shape != (num_seqs + 1,) or block_tables.shape[0] != num_seqs:
        raise ValueError("seq_lens, query_start_loc and block_tables disagree on num_seqs")


def choose_num_splits(num_seqs: int, n_head: int, max_seq_len: int, device: torch.device) -> int:
    """Split the context only when seqs x heads cannot fill the GPU and contexts are long."""
    if device.type != "cuda" or max_seq_len < 256:
        return 1
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = num_seqs * n_head
    if programs >= 2 * num_sms:
        return 1
    wanted = triton.cdiv(2 * num_sms, programs)
    return int(min(triton.next_power_of_2(wanted), 16, triton.cdiv(max_seq_len, 128)))


def paged_attention(
    query: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:  # [num_tokens, n_head, head_dim]
    """Same contract as `kernels.reference.paged_attention`; decode batches use split-K.

    `max_seq_len` must bound every seq_len: decode partitions the context by it (a captured
    CUDA graph passes the model's context length). `num_splits` None picks by occupancy.
    """
    _check_inputs(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc)
    out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0 or query.shape[0] == 0:
        return out
    if max_query_len == 1 and query.shape[0] == num_seqs:
        return _decode(
            query, k_cache, v_cache, block_tables, seq_lens, max_seq_len, scale, num_splits, out
        )
    n_head, head_dim = query.shape[1], query.shape[2]
    block_d = max(16, triton.next_power_of_2(head_dim))
    # Short chunks (and decode rows in a mixed batch) waste less of a small query tile; fp32
    # tiles stay small enough for the shared memory of any GPU.
    block_m = min(32 if query.dtype == torch.float32 else 64,
                  max(16, triton.next_power_of_2(max_query_len)))  # fmt: skip
    grid = (triton.cdiv(max_query_len, block_m), n_head, num_seqs)
    _prefill_attention_kernel[grid](
        query, k_cache, v_cache, out, block_tables, seq_lens, query_start_loc,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        scale, k_cache.shape[1], head_dim,
        BLOCK_M=block_m, BLOCK_N=64 if block_m == 64 else 32, BLOCK_D=block_d,
        num_warps=4 if block_d <= 64 else 8,
        UPCAST=query.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1",
    )  # fmt: skip
    return out


def _decode(
    query: torch.Tensor,  # [num_seqs, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # [num_seqs]
    max_seq_len: int,
    scale: float,
    num_splits: int | None,
    out: torch.Tensor,  # [num_seqs, n_head, head_dim]
) -> torch.Tensor:  # [num_seqs, n_head, head_dim]
    """One query per sequence; split-K partitions plus a reduce when num_splits > 1."""
    num_seqs, n_head, head_dim = query.shape
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, n_head, max_seq_len, query.device)
    num_splits = max(1, triton.next_power_of_2(num_splits))
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_n = 64
    partition_len = triton.cdiv(triton.cdiv(max(max_seq_len, 1), num_splits), block_n) * block_n
    parts = num_seqs * n_head * num_splits if num_splits > 1 else 1
    part_out = torch.empty((parts, block_d), dtype=torch.float32, device=query.device)
    part_max = torch.empty((parts,), dtype=torch.float32, device=query.device)
    part_sum = torch.empty((parts,), dtype=torch.float32, device=query.device)
    _decode_attention_kernel[(num_seqs, n_head, num_splits)](
        query, k_cache, v_cache, out, part_out, part_max, part_sum, block_tables, seq_lens,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        scale, k_cache.shape[1], head_dim, partition_len, n_head,
        NUM_SPLITS=num_splits, BLOCK_N=block_n, BLOCK_D=block_d,
    )  # fmt: skip
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, n_head)](
            part_out, part_max, part_sum, out, out.stride(0), out.stride(1), head_dim, n_head,
            NUM_SPLITS=num_splits, BLOCK_D=block_d,
        )  # fmt: skip
    return out
