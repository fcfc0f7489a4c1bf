"""Structured-output token bitmask: -inf every logit a grammar disallows (xgrammar's format).

A bitmask row holds ceil(vocab / 32) int32 words; token t is allowed iff bit t % 32 of word
t // 32 is set. Each program reads a block of words once and expands it to 32 tokens per word,
writing only the disallowed logits, so allowed logits (and unmasked rows) are never touched.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _apply_token_bitmask_kernel(
    logits_ptr,
    logits_stride,  # elements between logits rows; the last dim is contiguous
    bitmask_ptr,
    bitmask_stride,  # int32 words between bitmask rows
    row_indices_ptr,
    vocab,  # logits columns
    words,  # bitmask columns: tokens at or past 32 * words are disallowed
    BLOCK_WORDS: tl.constexpr,
):
    """One (mask, block of 32 * BLOCK_WORDS tokens): store -inf where the mask's bit is 0."""
    mask_id = tl.program_id(0)
    word_offs = tl.program_id(1) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)  # [BLOCK_WORDS]
    # int64 before the multiplies: num_rows * stride can pass 2**31 elements.
    row = tl.load(row_indices_ptr + mask_id).to(tl.int64)
    word_ptrs = bitmask_ptr + mask_id.to(tl.int64) * bitmask_stride + word_offs
    # A missing word reads as 0: tokens past the bitmask's width are disallowed.
    packed = tl.load(word_ptrs, mask=word_offs < words, other=0)  # [BLOCK_WORDS] int32
    bit_offs = tl.arange(0, 32)  # [32]
    # Arithmetic shift, but `& 1` keeps only the bit asked for, so bit 31 reads right too.
    allowed = ((packed[:, None] >> bit_offs[None, :]) & 1) != 0  # [BLOCK_WORDS, 32]
    tokens = word_offs[:, None] * 32 + bit_offs[None, :]  # [BLOCK_WORDS, 32]
    store = (tokens < vocab) & ~allowed  # bits past `vocab` are ignored
    neg_inf = tl.full([BLOCK_WORDS, 32], float("-inf"), logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * logits_stride + tokens, neg_inf, mask=store)


def _unit_last_stride(tensor: torch.Tensor) -> bool:
    """Whether the last dim is contiguous (a single column has no meaningful stride)."""
    return tensor.shape[-1] <= 1 or tensor.stride(-1) == 1


def _check_inputs(
    logits: torch.Tensor,  # [num_rows, vocab] float32/float16/bfloat16
    bitmask: torch.Tensor,  # [num_masks, words] int32
    row_indices: torch.Tensor,  # [num_masks] int64
) -> None:
    """Shapes, dtypes, devices, layouts and row ranges, before anything is written."""
    if logits.dim() != 2 or logits.dtype not in _DTYPES:
        raise ValueError(
            "logits must be a float32, float16 or bfloat16 [num_rows, vocab] tensor, "
            f"got {logits.dtype} {tuple(logits.shape)}"
        )
    if not _unit_last_stride(logits):
        raise ValueError(f"logits must have a contiguous last dim, got strides {logits.stride()}")
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32:
        raise ValueError(
            f"bitmask must be an int32 [num_masks, words] tensor, "
            f"got {bitmask.dtype} {tuple(bitmask.shape)}"
        )
    if not _unit_last_stride(bitmask):
        raise ValueError(f"bitmask must have a contiguous last dim, got strides {bitmask.stride()}")
    num_masks = bitmask.shape[0]
    if row_indices.dim() != 1 or row_indices.shape[0] != num_masks:
        raise ValueError(
            f"row_indices must be [{num_masks}] (one per bitmask row), "
            f"got {tuple(row_indices.shape)}"
        )
    if row_indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"row_indices must be int64, got {row_indices.dtype}")
    for name, tensor in (("bitmask", bitmask), ("row_indices", row_indices)):
        if tensor.device != logits.device:
            raise ValueError(f"{name} must be on {logits.device}, got {tensor.device}")
    num_rows = logits.shape[0]
    rows = row_indices.cpu()  # [num_masks]; one sync: an out-of-range row would write anywhere
    bad = (rows < 0) | (rows >= num_rows)  # [num_masks]
    if bool(bad.any()):
        raise ValueError(f"row_indices outside [0, {num_rows}): {rows[bad].tolist()}")


def apply_token_bitmask_triton(
    logits: torch.Tensor,  # [num_rows, vocab] float32/float16/bfloat16, modified in place
    bitmask: torch.Tensor,  # [num_masks, words] int32: bit t % 32 of word t // 32 = allowed
    row_indices: torch.Tensor,  # [num_masks] int64: the logits row each mask applies to
) -> None:
    """Same contract as `reference_sampling.apply_token_bitmask`; raises ValueError on bad input."""
    _check_inputs(logits, bitmask, row_indices)
    num_masks, words = bitmask.shape
    vocab = logits.shape[1]
    if num_masks == 0 or vocab == 0:
        return
    rows = row_indices.to(torch.int64).contiguous()  # [num_masks]
    # 128 words = 4096 tokens per program: GPT-2's 50,257 tokens take 13 programs per row.
    block_words = min(128, triton.next_power_of_2(triton.cdiv(vocab, 32)))
    grid = (num_masks, triton.cdiv(vocab, 32 * block_words))
    _apply_token_bitmask_kernel[grid](
        logits, logits.stride(0), bitmask, bitmask.stride(0), rows, vocab, words,
        BLOCK_WORDS=block_words,
    )  # fmt: skip
