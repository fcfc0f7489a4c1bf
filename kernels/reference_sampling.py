"""Torch versions of the sampling kernels: the CPU path and the test oracle for Triton."""

from __future__ import annotations

import torch


def counter_uniform(
    seeds: torch.Tensor,  # [num_seqs] int64
    steps: torch.Tensor,  # [num_seqs] int64: the request's output position
) -> torch.Tensor:  # [num_seqs] float32 in [0, 1)
    """A counter-based uniform draw per row: a pure function of (seed, step).

    splitmix64 finalizer over int64 with wrap-around arithmetic; the top 24 bits give the
    float. Being a pure function of the request's own seed and position is what makes a
    seeded request reproducible whatever else shares its batch.
    """
    x = seeds.to(torch.int64) * -7046029254386353131 + steps.to(torch.int64)  # 0x9E3779B97F4A7C15
    x = x ^ _logical_shift_right(x, 30)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ _logical_shift_right(x, 27)
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    x = x ^ _logical_shift_right(x, 31)
    top24 = _logical_shift_right(x, 40)  # [num_seqs] in [0, 2**24)
    return top24.to(torch.float32) * (1.0 / (1 << 24))


def _logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned right shift of int64 values (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def add_logit_bias(
    logits: torch.Tensor,  # [num_seqs, vocab] float32, modified in place
    bias_rows: torch.Tensor,  # [num_biases] int64: row of each bias entry
    bias_token_ids: torch.Tensor,  # [num_biases] int64
    bias_values: torch.Tensor,  # [num_biases] float32
) -> None:
    """OpenAI logit_bias: add each entry's value to its (row, token) logit."""
    if bias_rows.numel():
        values = bias_values.to(logits.dtype)  # [num_biases]
        logits.index_put_((bias_rows, bias_token_ids), values, accumulate=True)


def apply_penalties(
    logits: torch.Tensor,  # [num_seqs, vocab] float32, modified in place
    prompt_token_ids: torch.Tensor,  # [num_seqs, max_prompt_len] int64, padded with vocab
    output_token_ids: torch.Tensor,  # [num_seqs, max_output_len] int64, padded with vocab
    repetition_penalty: torch.Tensor,  # [num_seqs] float32; 1 = off
    presence_penalty: torch.Tensor,  # [num_seqs] float32; 0 = off
    frequency_penalty: torch.Tensor,  # [num_seqs] float32; 0 = off
) -> torch.Tensor:  # [num_seqs, vocab]
    """HF repetition penalty over prompt+output, then OpenAI presence/frequency on output."""
    num_seqs, vocab = logits.shape
    output_counts = torch.zeros(num_seqs, vocab + 1, dtype=logits.dtype, device=logits.device)
    output_counts.scatter_add_(
        1, output_token_ids, torch.ones_like(output_token_ids, dtype=logits.dtype)
    )
    output_counts = output_counts[:, :vocab]  # [num_seqs, vocab]
    seen = torch.zeros(num_seqs, vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, prompt_token_ids, True)
    seen = seen[:, :vocab] | (output_counts > 0)  # [num_seqs, vocab]
    rep = repetition_penalty[:, None]  # [num_seqs, 1]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    logits -= frequency_penalty[:, None] * output_counts
    logits -= presence_penalty[:, None] * (output_counts > 0).to(logits.dtype)
    return logits


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32: bias and penalties already applied
    temperature: torch.Tensor,  # [num_seqs] float32; 0 = greedy
    top_k: torch.Tensor,  # [num_seqs] int32; 0 = off
    top_p: torch.Tensor,  # [num_seqs] float32; 1 = off
    min_p: torch.Tensor,  # [num_seqs] float32; 0 = off
    uniform: torch.Tensor,  # [num_seqs] float32 in [0, 1): this step's draw per row
) -> torch.Tensor:  # [num_seqs] int64
    """Temperature, top-k, top-p (over the top-k survivors), min-p, then an inverse-CDF draw.

    The kept set is defined by value thresholds (ties at the threshold are kept), and the
    CDF runs over token ids in vocabulary order, so a sort-free kernel can reproduce the
    same token from the same `uniform`.
    """
    vocab = logits.shape[-1]
    greedy = temperature <= 0  # [num_seqs]
    if bool(greedy.all()):
        token_ids = logits.argmax(dim=-1)  # [num_seqs]
        # argmax ranks NaN highest; only a NaN winner needs the full sanitising pass.
        if bool(logits.gather(1, token_ids[:, None]).isnan().any()):
            return sanitize_logits(logits.float()).argmax(dim=-1)
        return token_ids
    safe_temp = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = sanitize_logits(logits.float() / safe_temp[:, None])  # [num_seqs, vocab]
    probs = torch.softmax(scaled, dim=-1)  # [num_seqs, vocab]
    keep = torch.ones_like(probs, dtype=torch.bool)  # [num_seqs, vocab]
    # Each filter costs a pass (top-k/top-p a sort) over the vocabulary: only when asked for.
    if bool(((top_k > 0) & (top_k < vocab)).any()):
        keep &= probs >= _top_k_threshold(probs, top_k)[:, None]
    if bool((top_p < 1.0).any()):
        # HF order: the nucleus is taken over the top-k survivors, renormalised.
        survivors = torch.where(keep, probs, torch.zeros_like(probs))  # [num_seqs, vocab]
        survivors = survivors / survivors.sum(dim=-1, keepdim=True)
        keep &= survivors >= _top_p_threshold(survivors, top_p)[:, None]
    if bool((min_p > 0).any()):
        max_prob = probs.max(dim=-1, keepdim=True).values  # [num_seqs, 1]
        keep &= probs >= min_p[:, None] * max_prob
    kept = torch.where(keep, probs, torch.zeros_like(probs))  # [num_seqs, vocab]
    cdf = kept.cumsum(dim=-1)  # [num_seqs, vocab]
    target = uniform[:, None] * cdf[:, -1:]  # [num_seqs, 1]
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=vocab - 1)
    # A draw can land on a zero-probability id only through rounding at the top end.
    drawn = torch.where(keep.gather(1, drawn[:, None]).squeeze(1), drawn, kept.argmax(dim=-1))
    return torch.where(greedy, scaled.argmax(dim=-1), drawn)


def sanitize_logits(logits: torch.Tensor) -> torch.Tensor:  # [num_seqs, vocab]
    """NaN -> -inf and +inf -> the largest float, so softmax stays a distribution.

    Extreme but valid parameters (a repetition penalty of 1e-300, say) overflow to inf;
    a request must then still get a token, not take the engine down.
    """
    largest = torch.finfo(logits.dtype).max
    return torch.nan_to_num(logits, nan=float("-inf"), posinf=largest)


def _top_k_threshold(
    probs: torch.Tensor,  # [num_seqs, vocab]
    top_k: torch.Tensor,  # [num_seqs] int32; 0 = off
) -> torch.Tensor:  # [num_seqs]: the k-th largest probability (0 when off)
    vocab = probs.shape[-1]
    k = torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k).long()  # [num_seqs]
    max_k = int(k.max())
    top_values = probs.topk(max_k, dim=-1).values  # [num_seqs, max_k]
    kth = top_values.gather(1, (k - 1)[:, None]).squeeze(1)
    return torch.where(k >= vocab, torch.zeros_like(kth), kth)


def _top_p_threshold(
    probs: torch.Tensor,  # [num_seqs, vocab]
    top_p: torch.Tensor,  # [num_seqs] float32; 1 = off
) -> torch.Tensor:  # [num_seqs]: smallest probability inside the nucleus (0 when off)
    sorted_probs = probs.sort(dim=-1, descending=True).values  # [num_seqs, vocab]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [num_seqs, vocab]
    inside = mass_before < top_p[:, None]  # the first token is always inside
    last_inside = (inside.sum(dim=-1) - 1).clamp(min=0)  # [num_seqs]
    threshold = sorted_probs.gather(1, last_inside[:, None]).squeeze(1)
    return torch.where(top_p >= 1.0, torch.zeros_like(threshold), threshold)


def chosen_logprobs(
    logits: torch.Tensor,  # [num_seqs, vocab]: raw model logits
    token_ids: torch.Tensor,  # [num_seqs] int64
) -> torch.Tensor:  # [num_seqs] float32
    """log_softmax(logits)[row, token_ids[row]] per row."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [num_seqs, vocab]
    return logprobs.gather(1, token_ids[:, None]).squeeze(1)


def apply_token_bitmask(
    logits: torch.Tensor,  # [num_rows, vocab] float32/float16/bfloat16, modified in place
    bitmask: torch.Tensor,  # [num_masks, words] int32: bit t % 32 of word t // 32 = allowed
    row_indices: torch.Tensor,  # [num_masks] int64: the logits row each mask applies to
) -> None:
    """Structured output: -inf every logit whose bit is 0 in its row's (xgrammar) bitmask."""
    num_rows, vocab = logits.shape
    needed = -(-vocab // 32)  # words that cover the logits' vocabulary
    words = bitmask.to(device=logits.device, dtype=torch.int32)[:, :needed]  # [num_masks, <=needed]
    # Tokens past the bitmask's width are disallowed: zero words; bits past `vocab` are cut.
    missing = needed - words.shape[1]
    zeros = torch.zeros(words.shape[0], missing, dtype=torch.int32, device=logits.device)
    words = torch.cat([words, zeros], dim=1)  # [num_masks, needed]
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)  # [32]
    # An arithmetic shift keeps bit 31's sign, but `& 1` keeps only the bit asked for.
    bits = (words[:, :, None] >> shifts) & 1  # [num_masks, needed, 32]
    disallowed = (bits == 0).flatten(1)[:, :vocab]  # [num_masks, vocab]
    # Summed per row, so a row named by several masks gets their intersection (any order).
    rows = row_indices.to(device=logits.device, dtype=torch.int64)  # [num_masks]
    forbidden = torch.zeros(num_rows, vocab, dtype=torch.int32, device=logits.device)
    forbidden.index_add_(0, rows, disallowed.to(torch.int32))  # [num_rows, vocab]
    logits.masked_fill_(forbidden > 0, float("-inf"))
