"""Triton fused sampling without a sort: exact thresholds by a k-ary search over float bits.

A program owns BLOCK_R rows (one for GPT-2's 50,257-token vocabulary, many for a small one)
and streams over each row's logits a few times: the max (and greedy argmax); for top-k and
top-p a search for the exact threshold value among the bit patterns of non-negative floats
(their integer order is the float order), each round testing WAYS candidates in one pass;
then the inverse-CDF draw over token ids in vocabulary order, as the reference does.
Values are e = exp(scaled - max): the probabilities times their sum, with max exactly 1, so
the thresholds compare the same ordering as the reference's probabilities.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_FLOAT_MAX = tl.constexpr(3.4028234663852886e38)
_ONE_BITS = tl.constexpr(0x3F800000)  # bit pattern of 1.0f: every threshold lies in [0, 1]


@triton.jit
def _scaled_chunk(row_logits, row_ok, offs, vocab, safe_temp):
    """Sanitised logits / temperature of one chunk, [BLOCK_R, BLOCK_V]; padding is -inf."""
    mask = row_ok[:, None] & (offs < vocab)[None, :]
    x = tl.load(row_logits + offs[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    x = x / safe_temp[:, None]
    # The reference's sanitize_logits: NaN -> -inf, +inf -> the largest float.
    return tl.minimum(tl.where(x != x, float("-inf"), x), _FLOAT_MAX)


@triton.jit
def _probs_chunk(row_logits, row_ok, offs, vocab, safe_temp, best):
    """e = exp(scaled - best) of one chunk, [BLOCK_R, BLOCK_V]; padding and -inf give 0."""
    return tl.exp(_scaled_chunk(row_logits, row_ok, offs, vocab, safe_temp) - best[:, None])


@triton.jit
def _row_argmax(row_logits, row_ok, vocab, safe_temp, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """Max of the sanitised scaled logits per row and the first index reaching it."""
    best = tl.full([BLOCK_R], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_R], tl.int32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = _scaled_chunk(row_logits, row_ok, offs, vocab, safe_temp)  # [BLOCK_R, BLOCK_V]
        chunk_best = tl.max(x, 1)
        chunk_idx = start + tl.argmax(x, 1)
        # Strictly greater: an earlier chunk's index wins a tie, as torch.argmax's does.
        best_idx = tl.where(chunk_best > best, chunk_idx, best_idx)
        best = tl.maximum(best, chunk_best)
    return best, best_idx


@triton.jit
def _mass_at_least(row_logits, row_ok, vocab, safe_temp, best, threshold,
                   BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    """Sum of e over entries with e >= threshold, per row [BLOCK_R]."""
    mass = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        e = _probs_chunk(row_logits, row_ok, offs, vocab, safe_temp, best)
        mass += tl.sum(tl.where(e >= threshold[:, None], e, 0.0), 1)
    return mass


@triton.jit
def _stat_above(row_logits, row_ok, vocab, safe_temp, best, cand, COUNT: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, WAYS: tl.constexpr):  # fmt: skip
    """Per row and candidate t: how many (COUNT) or how much e lies above t, [BLOCK_R, WAYS]."""
    stat = tl.zeros([BLOCK_R, WAYS], tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        e = _probs_chunk(row_logits, row_ok, offs, vocab, safe_temp, best)[:, :, None]
        above = e > cand[:, None, :]  # [BLOCK_R, BLOCK_V, WAYS]
        # Counts stay exact in fp32 up to 2**24 entries.
        stat += tl.sum(tl.where(above, 1.0 if COUNT else e, 0.0), 1)
    return stat


@triton.jit
def _search_threshold(row_logits, row_ok, vocab, safe_temp, best, floor, limit,
                      COUNT: tl.constexpr, ROUNDS: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_V: tl.constexpr, WAYS: tl.constexpr):  # fmt: skip
    """Smallest float t in [floor, 1] whose count/mass of e above it is < limit (1 if none).

    The answer stays in (lo, hi] of int32 bit patterns; each round tests WAYS evenly spaced
    candidates in one pass and keeps the gap where the predicate flips.
    """
    ways = tl.arange(0, WAYS) + 1  # [WAYS]
    lo = floor.to(tl.int32, bitcast=True) - 1  # [BLOCK_R], exclusive
    hi = tl.zeros([BLOCK_R], tl.int32) + _ONE_BITS  # [BLOCK_R], inclusive
    for _ in range(ROUNDS):
        step = (hi - lo + WAYS) // (WAYS + 1)  # ceil((hi - lo) / (WAYS + 1))
        cand = tl.minimum(lo[:, None] + ways[None, :] * step[:, None], hi[:, None])
        t = cand.to(tl.float32, bitcast=True)
        stat = _stat_above(row_logits, row_ok, vocab, safe_temp, best, t, COUNT,
                           BLOCK_R, BLOCK_V, WAYS)  # fmt: skip
        under = stat < limit[:, None]  # [BLOCK_R, WAYS]: t is at or past the answer
        lo = tl.maximum(lo, tl.max(tl.where(under, lo[:, None], cand), 1))
        hi = tl.minimum(hi, tl.min(tl.where(under, cand, hi[:, None]), 1))
    return hi.to(tl.float32, bitcast=True)


@triton.jit
def _inverse_cdf(row_logits, row_ok, rows, vocab, safe_temp, best, best_idx, threshold,
                 uniform_ptr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    """First kept token, in vocabulary order, whose cumulative kept mass exceeds u * total."""
    total = _mass_at_least(row_logits, row_ok, vocab, safe_temp, best, threshold, BLOCK_R, BLOCK_V)
    target = tl.load(uniform_ptr + rows, mask=row_ok, other=0.0) * total  # [BLOCK_R]
    running = tl.zeros([BLOCK_R], tl.float32)
    chosen = tl.zeros([BLOCK_R], tl.int32) + vocab  # vocab = none yet
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        e = _probs_chunk(row_logits, row_ok, offs, vocab, safe_temp, best)
        keep = (e >= threshold[:, None]) & (e > 0.0)  # [BLOCK_R, BLOCK_V]
        kept = tl.where(keep, e, 0.0)
        cdf = running[:, None] + tl.cumsum(kept, 1)
        # Only a kept entry can be where the CDF crosses (a scan's rounding must not pick a gap).
        hit = tl.min(tl.where(keep & (cdf > target[:, None]), offs[None, :], vocab), 1)
        chosen = tl.minimum(chosen, hit)
        running += tl.sum(kept, 1)
    # Rounding can leave the target past the last kept entry: the reference then takes argmax.
    return tl.where(chosen < vocab, chosen, best_idx)


@triton.jit
def _draw(row_logits, row_ok, rows, vocab, safe_temp, best, best_idx, sampling,
          top_k_ptr, top_p_ptr, min_p_ptr, uniform_ptr, ROUNDS: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, SEARCH_V: tl.constexpr,
          WAYS: tl.constexpr):  # fmt: skip
    """Kept set by value thresholds (top-k, then top-p over its survivors, min-p), then a draw."""
    top_k = tl.load(top_k_ptr + rows, mask=row_ok, other=0)
    top_p = tl.load(top_p_ptr + rows, mask=row_ok, other=1.0)
    min_p = tl.load(min_p_ptr + rows, mask=row_ok, other=0.0)
    best = tl.where(best == float("-inf"), 0.0, best)  # an all -inf row: zero mass, not NaN
    threshold = tl.zeros([BLOCK_R], tl.float32)
    use_k = sampling & (top_k > 0) & (top_k < vocab)
    if tl.max(use_k.to(tl.int32), 0) > 0:  # each filter costs passes: only when asked for
        kth = _search_threshold(row_logits, row_ok, vocab, safe_temp, best, threshold,
                                top_k.to(tl.float32), True, ROUNDS, BLOCK_R, SEARCH_V,
                                WAYS)  # fmt: skip
        threshold = tl.where(use_k, kth, threshold)
    use_p = sampling & (top_p < 1.0)
    if tl.max(use_p.to(tl.int32), 0) > 0:
        survivors = _mass_at_least(row_logits, row_ok, vocab, safe_temp, best, threshold,
                                   BLOCK_R, BLOCK_V)  # fmt: skip
        nucleus = _search_threshold(row_logits, row_ok, vocab, safe_temp, best, threshold,
                                    top_p * survivors, False, ROUNDS, BLOCK_R, SEARCH_V,
                                    WAYS)  # fmt: skip
        threshold = tl.where(use_p, nucleus, threshold)
    threshold = tl.maximum(threshold, min_p)  # max e is 1, so min_p * max_prob is min_p
    return _inverse_cdf(row_logits, row_ok, rows, vocab, safe_temp, best, best_idx, threshold,
                        uniform_ptr, BLOCK_R, BLOCK_V)  # fmt: skip


@triton.jit
def _sample_kernel(logits_ptr, logits_stride, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
                   uniform_ptr, out_ptr, num_seqs, vocab, ROUNDS: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, SEARCH_V: tl.constexpr,
                   WAYS: tl.constexpr):  # fmt: skip
    """BLOCK_R rows: greedy argmax, or a draw from the filtered distribution."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    row_ok = rows < num_seqs
    row_logits = logits_ptr + rows.to(tl.int64)[:, None] * logits_stride  # [BLOCK_R, 1]
    temperature = tl.load(temperature_ptr + rows, mask=row_ok, other=0.0)
    greedy = temperature <= 0.0
    safe_temp = tl.where(greedy, 1.0, temperature)
    best, best_idx = _row_argmax(row_logits, row_ok, vocab, safe_temp, BLOCK_R, BLOCK_V)
    token = best_idx
    sampling = row_ok & ~greedy
    if tl.max(sampling.to(tl.int32), 0) > 0:
        drawn = _draw(row_logits, row_ok, rows, vocab, safe_temp, best, best_idx, sampling,
                      top_k_ptr, top_p_ptr, min_p_ptr, uniform_ptr, ROUNDS, BLOCK_R, BLOCK_V,
                      SEARCH_V, WAYS)  # fmt: skip
        token = tl.where(sampling, drawn, best_idx)
    tl.store(out_ptr + rows, token.to(tl.int64), mask=row_ok)


def search_rounds(ways: int) -> int:
    """Rounds of a WAYS-candidate search that pin one bit pattern among (-1, 1.0f]."""
    span, rounds = _ONE_BITS.value + 1, 0
    while span > 1:
        span, rounds = -(-span // (ways + 1)), rounds + 1
    return rounds


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32 (fp16/bf16 are upcast on load)
    temperature: torch.Tensor,  # [num_seqs] float32; <= 0 = greedy
    top_k: torch.Tensor,  # [num_seqs] int32; 0 = off
    top_p: torch.Tensor,  # [num_seqs] float32; 1 = off
    min_p: torch.Tensor,  # [num_seqs] float32; 0 = off
    uniform: torch.Tensor,  # [num_seqs] float32 in [0, 1)
    search_ways: int = 8,
) -> torch.Tensor:  # [num_seqs] int64
    """Same contract and tokens as `kernels.reference.sample`, without sorting the vocabulary."""
    if logits.dim() != 2 or logits.stride(1) != 1 or not logits.is_floating_point():
        raise ValueError("logits must be a floating [num_seqs, vocab] tensor with unit last stride")
    if search_ways < 1 or search_ways & (search_ways - 1):
        raise ValueError(f"search_ways must be a power of two, got {search_ways}")
    num_seqs, vocab = logits.shape
    params = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
              "uniform": uniform}  # fmt: skip
    for name, tensor in params.items():
        if tensor.shape != (num_seqs,) or tensor.device != logits.device:
            raise ValueError(f"{name} must be [{num_seqs}] on {logits.device}, got "
                             f"{tuple(tensor.shape)} on {tensor.device}")  # fmt: skip
    out = torch.empty(num_seqs, dtype=torch.int64, device=logits.device)
    if num_seqs == 0:
        return out
    floats = [t.to(torch.float32).contiguous() for t in (temperature, top_p, min_p, uniform)]
    # Tiles: [BLOCK_R, BLOCK_V] for plain passes, [BLOCK_R, SEARCH_V, WAYS] for the search.
    # A GPT-2 row is one program; a small vocabulary packs rows (the interpreter runs each
    # program serially, so it gets bigger tiles; a GPU's must fit registers).
    tile = 16384 if os.environ.get("TRITON_INTERPRET") == "1" else 4096
    block_v = min(4096, triton.next_power_of_2(vocab))
    block_r = min(
        triton.next_power_of_2(num_seqs),
        max(1, tile // block_v),
        max(1, 4 * tile // (search_ways * min(block_v, 16))),
    )
    search_v = min(block_v, max(16, 4 * tile // (search_ways * block_r)))
    _sample_kernel[(triton.cdiv(num_seqs, block_r),)](
        logits, logits.stride(0), floats[0], top_k.to(torch.int32).contiguous(), floats[1],
        floats[2], floats[3], out, num_seqs, vocab, ROUNDS=search_rounds(search_ways),
        BLOCK_R=block_r, BLOCK_V=block_v, SEARCH_V=search_v, WAYS=search_ways,
        num_warps=8 if block_r * block_v >= 4096 else 4,
    )  # fmt: skip
    return out
