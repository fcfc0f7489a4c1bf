"""The torch reference kernels against naive dense formulations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gpt2serve.kernels import reference


def naive_attention(
    query: torch.Tensor,  # [q_len, n_head, head_dim]
    keys: torch.Tensor,  # [seq_len, n_head, head_dim]
    values: torch.Tensor,  # [seq_len, n_head, head_dim]
) -> torch.Tensor:  # [q_len, n_head, head_dim]
    q_len, seq_len = query.shape[0], keys.shape[0]
    out = torch.empty_like(query)
    for j in range(q_len):
        pos = seq_len - q_len + j
        scores = torch.einsum("hd,khd->hk", query[j], keys[: pos + 1]) / math.sqrt(query.shape[-1])
        out[j] = torch.einsum("hk,khd->hd", scores.softmax(-1), values[: pos + 1])
    return out


@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_attention_matches_naive_on_ragged_mixed_batch(block_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    n_head, head_dim, num_blocks = 3, 8, 64
    k_cache = torch.zeros(num_blocks, block_size, n_head, head_dim)
    v_cache = torch.zeros_like(k_cache)
    # (seq_len, q_len): decode, full prefill, chunked prefill over a cached prefix, exact block
    shapes = [
        (9, 1),
        (5, 5),
        (23, 7),
        (2 * block_size, 1),
        (1, 1),
        (block_size + 1, block_size + 1),
    ]
    free = list(range(1, num_blocks))
    random.Random(0).shuffle(free)
    tables, queries, dense = [], [], []
    for seq_len, q_len in shapes:
        table = [free.pop() for _ in range(-(-seq_len // block_size))]
        keys = torch.randn(seq_len, n_head, head_dim, generator=gen)
        values = torch.randn(seq_len, n_head, head_dim, generator=gen)
        slots = torch.tensor(
            [table[p // block_size] * block_size + p % block_size for p in range(seq_len)]
        )
        reference.write_kv_cache(keys, values, k_cache, v_cache, slots)
        tables.append(table + [0] * (8 - len(table)))
        queries.append(torch.randn(q_len, n_head, head_dim, generator=gen))
        dense.append((keys, values))
    q_lens = [q for _, q in shapes]
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    out = reference.paged_attention(
        torch.cat(queries),
        k_cache,
        v_cache,
        torch.tensor(tables, dtype=torch.int32),
        torch.tensor([s for s, _ in shapes], dtype=torch.int32),
        starts,
        max(q_lens),
        max(s for s, _ in shapes),
        head_dim**-0.5,
    )
    expected = torch.cat(
        [naive_attention(q, k, v) for q, (k, v) in zip(queries, dense, strict=True)]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_write_kv_cache_skips_padding_slots() -> None:
    k_cache = torch.zeros(4, 2, 1, 2)
    v_cache = torch.zeros_like(k_cache)
    key = torch.arange(6.0).view(3, 1, 2)
    reference.write_kv_cache(key, -key, k_cache, v_cache, torch.tensor([5, -1, 0]))
    assert torch.equal(k_cache.view(8, 2)[5], torch.tensor([0.0, 1.0]))
    assert torch.equal(k_cache.view(8, 2)[0], torch.tensor([4.0, 5.0]))
    assert torch.equal(v_cache.view(8, 2)[0], torch.tensor([-4.0, -5.0]))
    assert int((k_cache != 0).sum()) == 3  # the padding row was written nowhere


def test_counter_uniform_is_a_pure_function_of_seed_and_step() -> None:
    seeds = torch.tensor([7, 7, 8, 2**62], dtype=torch.int64)
    steps = torch.tensor([0, 1, 0, 5], dtype=torch.int64)
    first = reference.counter_uniform(seeds, steps)
    again = reference.counter_uniform(seeds.flip(0), steps.flip(0)).flip(0)
    assert torch.equal(first, again)
    assert len(set(first.tolist())) == 4
    many = reference.counter_uniform(torch.zeros(20000, dtype=torch.int64), torch.arange(20000))
    assert float(many.min()) >= 0.0 and float(many.max()) < 1.0
    assert abs(float(many.mean()) - 0.5) < 0.01


def test_penalties_match_hand_computed_example() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    prompt = torch.tensor([[0, 1, 5]])  # 5 = padding (vocab)
    output = torch.tensor([[3, 3, 2, 5]])
    out = reference.apply_penalties(
        logits.clone(),
        prompt,
        output,
        torch.tensor([2.0]),
        torch.tensor([0.5]),
        torch.tensor([0.25]),
    )
    # token 0: seen in prompt, positive -> 2/2; token 1: seen, negative -> -1*2
    # token 2: output once -> 0.5/2 - 0.25 - 0.5; token 3: output twice -> 3/2 - 0.5 - 0.5
    expected = torch.tensor([[1.0, -2.0, -0.5, 0.5, -2.0]])
    torch.testing.assert_close(out, expected)


def test_sample_greedy_topk1_and_kept_set() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=gen)
    uniform = torch.rand(6, generator=gen)
    ones = torch.ones(6)
    greedy = reference.sample(
        logits, torch.zeros(6), torch.zeros(6, dtype=torch.int32), ones, 0 * ones, uniform
    )
    topk1 = reference.sample(
        logits, ones, torch.ones(6, dtype=torch.int32), ones, 0 * ones, uniform
    )
    assert torch.equal(greedy, logits.argmax(-1)) and torch.equal(topk1, greedy)
    top3 = reference.sample(
        logits, ones, torch.full((6,), 3, dtype=torch.int32), ones, 0 * ones, uniform
    )
    allowed = logits.topk(3, dim=-1).indices
    assert all(int(t) in allowed[i].tolist() for i, t in enumerate(top3))


def test_greedy_argmax_with_nan_and_inf_logits() -> None:
    logits = torch.tensor(
        [
            [1.0, float("nan"), 3.0, 2.0],  # NaN is never chosen (argmax alone would pick it)
            [float("inf"), 5.0, float("inf"), 0.0],  # the first +inf wins
            [float("nan"), float("nan"), -1.0, float("-inf")],
            [0.5, 0.25, 0.5, 0.0],  # a tie: the lowest id
        ]
    )
    greedy = torch.zeros(4)
    off = (torch.zeros(4, dtype=torch.int32), torch.ones(4), torch.zeros(4), torch.rand(4))
    assert reference.sample(logits, greedy, *off).tolist() == [2, 0, 2, 0]
    mixed = torch.tensor([0.0, 0.0, 0.0, 1.0])  # the non-greedy path sanitises the same way
    assert reference.sample(logits, mixed, *off)[:3].tolist() == [2, 0, 2]
