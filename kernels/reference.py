"""Torch versions of every kernel: the CPU path and the test oracle for the Triton kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, n_head, head_dim]
    value: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64; -1 marks a padding token that is skipped
) -> None:
    """Scatter each token's K/V row into its slot (`block_id * block_size + offset`)."""
    num_blocks, block_size, n_head, head_dim = k_cache.shape
    flat_k = k_cache.view(num_blocks * block_size, n_head, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, n_head, head_dim)
    valid = slot_mapping >= 0  # [num_tokens]
    if bool(valid.all()):
        flat_k.index_copy_(0, slot_mapping, key.to(k_cache.dtype))
        flat_v.index_copy_(0, slot_mapping, value.to(v_cache.dtype))
    else:
        slots = slot_mapping[valid]
        flat_k.index_copy_(0, slots, key[valid].to(k_cache.dtype))
        flat_v.index_copy_(0, slots, value[valid].to(v_cache.dtype))


def _gather_context(
    cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_table: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32/int64
    context_len: int,
) -> torch.Tensor:  # [num_seqs, context_len, n_head, head_dim]
    """Read the first `context_len` token rows of each sequence from its pages."""
    block_size = cache.shape[1]
    num_blocks_needed = (context_len + block_size - 1) // block_size
    blocks = block_table[:, :num_blocks_needed].long()  # [num_seqs, num_blocks_needed]
    pages = cache[blocks]  # [num_seqs, num_blocks_needed, block_size, n_head, head_dim]
    num_seqs = pages.shape[0]
    return pages.reshape(num_seqs, num_blocks_needed * block_size, *cache.shape[2:])[
        :, :context_len
    ]


def paged_attention(
    query: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32: tokens in cache after this step's write
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32: cu_seqlens of the new tokens
    max_query_len: int,
    max_seq_len: int,
    scale: float,
) -> torch.Tensor:  # [num_tokens, n_head, head_dim]
    """Attention of each sequence's new tokens over its whole paged context.

    The new tokens' K/V must already be in the cache. New token j of a sequence with
    `q_len` new tokens and `seq_len` total sits at position `seq_len - q_len + j`; it
    attends to every position up to and including its own (causal within the new tokens,
    full over the cached prefix), which makes chunked prefill and prefix reuse one path.
    """
    output = torch.empty_like(query)
    seq_lens_list = seq_lens.tolist()
    starts = query_start_loc.tolist()
    query_lens = [starts[i + 1] - starts[i] for i in range(len(seq_lens_list))]
    decode_idx = [i for i, q in enumerate(query_lens) if q == 1]
    if decode_idx and len(decode_idx) == len(query_lens) and max_query_len == 1:
        output.copy_(_decode_attention(query, k_cache, v_cache, block_tables, seq_lens, scale))
        return output
    if decode_idx:
        idx = torch.tensor(decode_idx, device=query.device)
        token_idx = query_start_loc[idx].long()
        output[token_idx] = _decode_attention(
            query[token_idx], k_cache, v_cache, block_tables[idx], seq_lens[idx], scale
        )
    for i, q_len in enumerate(query_lens):
        if q_len > 1:
            start = starts[i]
            output[start : start + q_len] = _prefill_one(
                query[start : start + q_len],
                k_cache,
                v_cache,
                block_tables[i],
                seq_lens_list[i],
                scale,
            )
    return output


def _decode_attention(
    query: torch.Tensor,  # [num_seqs, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # [num_seqs]
    scale: float,
) -> torch.Tensor:  # [num_seqs, n_head, head_dim]
    """One query per sequence over its context; sequences padded to the longest and masked.

    Plain einsums over the gathered pages: on CPU this is ~2.5x faster than SDPA with a mask.
    """
    max_len = int(seq_lens.max())
    keys = _gather_context(k_cache, block_tables, max_len)  # [num_seqs, max_len, n_head, head_dim]
    values = _gather_context(v_cache, block_tables, max_len)
    scores = torch.einsum("bhd,blhd->bhl", query.float(), keys.float()) * scale
    positions = torch.arange(max_len, device=query.device)  # [max_len]
    padding = positions[None, :] >= seq_lens[:, None].to(positions.device)  # [num_seqs, max_len]
    scores.masked_fill_(padding[:, None, :], float("-inf"))  # [num_seqs, n_head, max_len]
    out = torch.einsum("bhl,blhd->bhd", scores.softmax(dim=-1), values.float())
    return out.to(query.dtype)


def _prefill_one(
    query: torch.Tensor,  # [q_len, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,
    block_table: torch.Tensor,  # [max_blocks_per_seq]
    seq_len: int,
    scale: float,
) -> torch.Tensor:  # [q_len, n_head, head_dim]
    """Causal attention of one sequence's new tokens over its cached prefix and themselves."""
    q_len = query.shape[0]
    keys = _gather_context(k_cache, block_table[None], seq_len)[0]  # [seq_len, n_head, head_dim]
    values = _gather_context(v_cache, block_table[None], seq_len)[0]
    if q_len == seq_len:  # no cached prefix: plain causal attention, SDPA's fast path
        out = F.scaled_dot_product_attention(
            query.transpose(0, 1).float(),  # [n_head, q_len, head_dim]
            keys.transpose(0, 1).float(),
            values.transpose(0, 1).float(),
            is_causal=True,
            scale=scale,
        )  # [n_head, q_len, head_dim]
        return out.transpose(0, 1).to(query.dtype)
    q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)  # [q_len]
    k_pos = torch.arange(seq_len, device=query.device)  # [seq_len]
    mask = k_pos[None, :] <= q_pos[:, None]  # [q_len, seq_len]
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1).float(),  # [n_head, q_len, head_dim]
        keys.transpose(0, 1).float(),  # [n_head, seq_len, head_dim]
        values.transpose(0, 1).float(),
        attn_mask=mask[None],
        scale=scale,
    )  # [n_head, q_len, head_dim]
    return out.transpose(0, 1).to(query.dtype)


_MASK64 = (1 << 64) - 1


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
        return sanitize_logits(logits.float()).argmax(dim=-1)
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


def top_logprobs(
    logits: torch.Tensor,  # [num_seqs, vocab]: raw model logits
    token_ids: torch.Tensor,  # [num_seqs] int64: the chosen tokens
    num_top: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen-token logprob, plus the top-`num_top` ids and logprobs of the raw distribution."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [num_seqs, vocab]
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)  # [num_seqs]
    top_values, top_ids = (
        logprobs.topk(num_top, dim=-1)
        if num_top > 0
        else (
            logprobs[:, :0],
            token_ids[:, None][:, :0],
        )
    )
    return chosen, top_ids, top_values
