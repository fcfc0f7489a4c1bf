"""Triton chosen-token logprob: one streaming pass for the row's log-sum-exp, then a gather."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _chosen_logprob_kernel(logits_ptr, logits_stride, token_ids_ptr, out_ptr, vocab,
                           BLOCK_V: tl.constexpr):  # fmt: skip
    """One row: logits[token] - logsumexp(logits), with an online max so nothing overflows."""
    row = tl.program_id(0)
    row_logits = logits_ptr + row.to(tl.int64) * logits_stride
    running_max = tl.full([BLOCK_V], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_logits + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, x)
        # Lanes that have seen only -inf keep a zero sum (and avoid inf - inf = NaN).
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.exp(x - safe_max)
        running_max = new_max
    row_max = tl.max(running_max, 0)
    safe_row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    lane_max = tl.where(running_max == float("-inf"), safe_row_max, running_max)
    total = tl.sum(running_sum * tl.exp(lane_max - safe_row_max), 0)
    token = tl.load(token_ids_ptr + row)
    chosen = tl.load(row_logits + token).to(tl.float32)
    tl.store(out_ptr + row, chosen - (safe_row_max + tl.log(total)))


def chosen_logprobs(
    logits: torch.Tensor,  # [num_seqs, vocab]: raw model logits (fp32/fp16/bf16)
    token_ids: torch.Tensor,  # [num_seqs] int64
) -> torch.Tensor:  # [num_seqs] float32
    """Same contract as `kernels.reference.chosen_logprobs`."""
    if logits.dim() != 2 or logits.stride(1) != 1 or not logits.is_floating_point():
        raise ValueError("logits must be a floating [num_seqs, vocab] tensor with unit last stride")
    num_seqs, vocab = logits.shape
    if token_ids.shape != (num_seqs,) or token_ids.device != logits.device:
        raise ValueError(
            f"token_ids must be [{num_seqs}] on {logits.device}, got "
            f"{tuple(token_ids.shape)} on {token_ids.device}"
        )
    out = torch.empty(num_seqs, dtype=torch.float32, device=logits.device)
    if num_seqs == 0:
        return out
    block_v = min(4096, triton.next_power_of_2(vocab))
    _chosen_logprob_kernel[(num_seqs,)](
        logits, logits.stride(0), token_ids.to(torch.int64).contiguous(), out, vocab,
        BLOCK_V=block_v,
    )  # fmt: skip
    return out
