"""Triton fused sampling without sorting: thresholds by bisection over float bit patterns.

One program per row. The row's scaled probabilities (unnormalised, max 1) go to a scratch
buffer once; the top-k and top-p thresholds are then found exactly by bisecting over the
int32 bit patterns of non-negative floats (their order is the float order), each probe a
pass over the row. The draw is an inverse CDF in vocabulary order, like the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FLOAT_MAX = tl.constexpr(3.4028234663852886e38)
_ONE_BITS = tl.constexpr(0x3F800000)  # bit pattern of 1.0f: every value searched is in [0, 1]


@triton.jit
def _count_and_mass_above(e_ptr, vocab, threshold, floor, BLOCK_V: tl.constexpr):
    """Number and summed value of entries > threshold and >= floor."""
    count = tl.sum(tl.zeros([BLOCK_V], tl.int32), 0)
    mass = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        e = tl.load(e_ptr + offs, mask=offs < vocab, other=0.0)
        above = (e > threshold) & (e >= floor)
        count += tl.sum(above.to(tl.int32), 0)
        mass += tl.sum(tl.where(above, e, 0.0), 0)
    return count, mass


@triton.jit
def _bisect_threshold(
    e_ptr, vocab, floor, k, mass_limit, USE_COUNT: tl.constexpr, BLOCK_V: tl.constexpr
):
    """Smallest t >= floor with count(e > t) < k (USE_COUNT) or mass(e > t) < mass_limit."""
    lo = floor.to(tl.int32, bitcast=True)
    hi = lo * 0 + (_ONE_BITS + 1)
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        count, mass = _count_and_mass_above(
            e_ptr, vocab, mid.to(tl.float32, bitcast=True), floor, BLOCK_V
        )
        done = (count < k) if USE_COUNT else (mass < mass_limit)
        hi = tl.where(done & (lo < hi), mid, hi)
        lo = tl.where(done | (lo >= hi), lo, mid + 1)
    return lo.to(tl.float32, bitcast=True)


@triton.jit
def _sample_kernel(
    logits_ptr, logits_stride, e_ptr, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
    uniform_ptr, out_ptr, vocab, BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    row_logits = logits_ptr + row.to(tl.int64) * logits_stride
    row_e = e_ptr + row.to(tl.int64) * vocab
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature <= 0.0
    safe_temp = tl.where(greedy, 1.0, temperature)
    # Pass 1: max (and its first index) of the sanitised scaled logits.
    best = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), 0)
    best_idx = tl.sum(tl.zeros([BLOCK_V], tl.int32), 0)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_logits + offs, mask=offs < vocab, other=float("-inf")) / safe_temp
        x = tl.minimum(tl.where(x != x, float("-inf"), x), _FLOAT_MAX)
        chunk_best = tl.max(x, 0)
        chunk_idx = start + tl.argmax(x, 0)
        best_idx = tl.where(chunk_best > best, chunk_idx, best_idx)
        best = tl.maximum(best, chunk_best)
    token = best_idx
    if not greedy:
        token = _draw(row_logits, row_e, safe_temp, best, best_idx, vocab, row,
                      top_k_ptr, top_p_ptr, min_p_ptr, uniform_ptr, BLOCK_V)  # fmt: skip
    tl.store(out_ptr + row, token.to(tl.int64))


@triton.jit
def _draw(row_logits, row_e, safe_temp, best, best_idx, vocab, row,
          top_k_ptr, top_p_ptr, min_p_ptr, uniform_ptr, BLOCK_V: tl.constexpr):  # fmt: skip
    """Everything after the max: scaled probabilities, thresholds, inverse-CDF draw."""
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_logits + offs, mask=offs < vocab, other=float("-inf")) / safe_temp
        x = tl.minimum(tl.where(x != x, float("-inf"), x), _FLOAT_MAX)
        tl.store(row_e + offs, tl.exp(x - best), mask=offs < vocab)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    threshold = best * 0.0
    if (top_k > 0) & (top_k < vocab):
        threshold = _bisect_threshold(row_e, vocab, threshold, top_k, 0.0, True, BLOCK_V)
    if top_p < 1.0:
        _, kept_mass = _count_and_mass_above(row_e, vocab, -1.0, threshold, BLOCK_V)
        nucleus = _bisect_threshold(row_e, vocab, threshold, 0, top_p * kept_mass, False, BLOCK_V)
        threshold = tl.maximum(threshold, nucleus)
    threshold = tl.maximum(threshold, min_p)  # max of e is 1, so min_p * max_prob is min_p
    _, total = _count_and_mass_above(row_e, vocab, -1.0, threshold, BLOCK_V)
    target = tl.load(uniform_ptr + row) * total
    running = total * 0.0
    chosen = best_idx * 0 + vocab  # "none yet"
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        e = tl.load(row_e + offs, mask=offs < vocab, other=0.0)
        kept = (e >= threshold) & (offs < vocab)
        cdf = running + tl.cumsum(tl.where(kept, e, 0.0), 0)
        hit = tl.min(tl.where(kept & (cdf > target), offs, vocab), 0)
        chosen = tl.minimum(chosen, hit)
        running += tl.sum(tl.where(kept, e, 0.0), 0)
    # Rounding can leave the target past the last kept entry: take the most likely token.
    return tl.where(chosen < vocab, chosen, best_idx)


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    temperature: torch.Tensor,  # [num_seqs] float32
    top_k: torch.Tensor,  # [num_seqs] int32
    top_p: torch.Tensor,  # [num_seqs] float32
    min_p: torch.Tensor,  # [num_seqs] float32
    uniform: torch.Tensor,  # [num_seqs] float32
) -> torch.Tensor:  # [num_seqs] int64
    """Same contract as `kernels.reference.sample`."""
    if logits.dim() != 2 or logits.stride(1) != 1 or logits.dtype != torch.float32:
        raise ValueError("logits must be [num_seqs, vocab] float32 with a unit last stride")
    num_seqs, vocab = logits.shape
    for name, tensor in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                         ("min_p", min_p), ("uniform", uniform)):  # fmt: skip
        if tensor.shape != (num_seqs,) or not tensor.is_contiguous():
            raise ValueError(f"{name} must be a contiguous [{num_seqs}] tensor")
    out = torch.empty(num_seqs, dtype=torch.int64, device=logits.device)
    if num_seqs == 0:
        return out
    scratch = torch.empty(num_seqs, vocab, dtype=torch.float32, device=logits.device)
    block_v = min(4096, triton.next_power_of_2(vocab))
    _sample_kernel[(num_seqs,)](
        logits, logits.stride(0), scratch, temperature, top_k.to(torch.int32), top_p, min_p,
        uniform, out, vocab, BLOCK_V=block_v,
    )  # fmt: skip
    return out
