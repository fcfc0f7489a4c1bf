"""Triton logit bias and repetition / presence / frequency penalties over a batch of logits.

Three small scatter kernels turn the requests' token lists into dense per-row tables (output
counts, prompt membership) and add the sparse logit bias; one streaming pass then applies
every penalty to each logit exactly once. The tables cost one memset, which is cheaper than
sorting or de-duplicating token lists on the host every step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _count_tokens_kernel(ids_ptr, ids_stride, counts_ptr, vocab, max_len, BLOCK: tl.constexpr):
    """One (row, chunk of its token list): counts[row, id] += 1 per valid id; vocab = padding."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_list = offs < max_len
    ids = tl.load(ids_ptr + row.to(tl.int64) * ids_stride + offs, mask=in_list, other=vocab)
    valid = in_list & (ids >= 0) & (ids < vocab)
    dst = counts_ptr + row.to(tl.int64) * vocab + tl.where(valid, ids, 0).to(tl.int64)
    tl.atomic_add(dst, tl.full([BLOCK], 1, tl.int32), mask=valid)


@triton.jit
def _add_bias_kernel(logits_ptr, logits_stride, rows_ptr, ids_ptr, values_ptr, num_biases,
                     BLOCK: tl.constexpr):  # fmt: skip
    """logits[rows[i], ids[i]] += values[i]; (row, id) pairs are unique, so no atomics."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_biases
    rows = tl.load(rows_ptr + offs, mask=mask, other=0).to(tl.int64)
    ids = tl.load(ids_ptr + offs, mask=mask, other=0).to(tl.int64)
    values = tl.load(values_ptr + offs, mask=mask, other=0.0)
    ptrs = logits_ptr + rows * logits_stride + ids
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + values, mask=mask)


@triton.jit
def _penalize_kernel(logits_ptr, logits_stride, prompt_seen_ptr, output_counts_ptr,
                     repetition_ptr, presence_ptr, frequency_ptr, vocab,
                     BLOCK_V: tl.constexpr):  # fmt: skip
    """One (row, chunk of the vocabulary): HF repetition penalty, then OpenAI penalties."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = offs < vocab
    table = row.to(tl.int64) * vocab + offs
    ptrs = logits_ptr + row.to(tl.int64) * logits_stride + offs
    x = tl.load(ptrs, mask=mask, other=0.0)
    counts = tl.load(output_counts_ptr + table, mask=mask, other=0)
    seen = (tl.load(prompt_seen_ptr + table, mask=mask, other=0) > 0) | (counts > 0)
    repetition = tl.load(repetition_ptr + row)
    presence = tl.load(presence_ptr + row)
    frequency = tl.load(frequency_ptr + row)
    x = tl.where(seen, tl.where(x > 0, x / repetition, x * repetition), x)
    x = x - frequency * counts.to(tl.float32)
    x = x - presence * (counts > 0).to(tl.float32)
    tl.store(ptrs, x, mask=mask)


def _check_rows(name: str, tensor: torch.Tensor, num_seqs: int, device: torch.device) -> None:
    if tensor.dim() != 1 or tensor.shape[0] != num_seqs or tensor.device != device:
        raise ValueError(
            f"{name} must be [{num_seqs}] on {device}, got {tuple(tensor.shape)} on {tensor.device}"
        )


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("logits must be a float32 [num_seqs, vocab] tensor with unit last stride")


def _dense_counts(
    token_ids: torch.Tensor,  # [num_seqs, max_len] int64, padded with vocab
    vocab: int,
) -> torch.Tensor:  # [num_seqs, vocab] int32
    num_seqs, max_len = token_ids.shape
    counts = torch.zeros(num_seqs, vocab, dtype=torch.int32, device=token_ids.device)
    if max_len == 0 or num_seqs == 0:
        return counts
    token_ids = token_ids.to(torch.int64).contiguous()
    block = min(1024, triton.next_power_of_2(max_len))
    grid = (num_seqs, triton.cdiv(max_len, block))
    _count_tokens_kernel[grid](token_ids, token_ids.stride(0), counts, vocab, max_len, BLOCK=block)
    return counts


def apply_penalties(
    logits: torch.Tensor,  # [num_seqs, vocab] float32, modified in place
    prompt_token_ids: torch.Tensor,  # [num_seqs, max_prompt_len] int64, padded with vocab
    output_token_ids: torch.Tensor,  # [num_seqs, max_output_len] int64, padded with vocab
    repetition_penalty: torch.Tensor,  # [num_seqs] float32; 1 = off
    presence_penalty: torch.Tensor,  # [num_seqs] float32; 0 = off
    frequency_penalty: torch.Tensor,  # [num_seqs] float32; 0 = off
) -> torch.Tensor:  # [num_seqs, vocab]: `logits` itself
    """Same contract and values as `kernels.reference.apply_penalties`."""
    _check_logits(logits)
    num_seqs, vocab = logits.shape
    token_lists = {"prompt_token_ids": prompt_token_ids, "output_token_ids": output_token_ids}
    for name, ids in token_lists.items():
        if ids.dim() != 2 or ids.shape[0] != num_seqs or ids.device != logits.device:
            raise ValueError(f"{name} must be [{num_seqs}, max_len] on {logits.device}")
    penalties = (repetition_penalty, presence_penalty, frequency_penalty)
    for name, tensor in zip(("repetition", "presence", "frequency"), penalties, strict=True):
        _check_rows(f"{name}_penalty", tensor, num_seqs, logits.device)
    if num_seqs == 0:
        return logits
    prompt_seen = _dense_counts(prompt_token_ids, vocab)  # [num_seqs, vocab] int32
    output_counts = _dense_counts(output_token_ids, vocab)  # [num_seqs, vocab] int32
    block_v = min(2048, triton.next_power_of_2(vocab))
    rep, pres, freq = (t.to(torch.float32).contiguous() for t in penalties)
    grid = (num_seqs, triton.cdiv(vocab, block_v))
    _penalize_kernel[grid](
        logits, logits.stride(0), prompt_seen, output_counts, rep, pres, freq, vocab,
        BLOCK_V=block_v,
    )  # fmt: skip
    return logits


def add_logit_bias(
    logits: torch.Tensor,  # [num_seqs, vocab] float32, modified in place
    bias_rows: torch.Tensor,  # [num_biases] int64
    bias_token_ids: torch.Tensor,  # [num_biases] int64; (row, id) pairs unique
    bias_values: torch.Tensor,  # [num_biases] float32
) -> None:
    """Same contract as `kernels.reference.add_logit_bias` (for unique (row, id) pairs)."""
    _check_logits(logits)
    num_biases = bias_rows.shape[0]
    for name, tensor in (("bias_token_ids", bias_token_ids), ("bias_values", bias_values)):
        _check_rows(name, tensor, num_biases, logits.device)
    _check_rows("bias_rows", bias_rows, num_biases, logits.device)
    if num_biases == 0:
        return
    # Ids are range-checked when a request is validated; checking here would cost a host sync.
    block = min(1024, triton.next_power_of_2(num_biases))
    _add_bias_kernel[(triton.cdiv(num_biases, block),)](
        logits, logits.stride(0), bias_rows.to(torch.int64).contiguous(),
        bias_token_ids.to(torch.int64).contiguous(), bias_values.to(torch.float32).contiguous(),
        num_biases, BLOCK=block,
    )  # fmt: skip
