"""Triton paged attention (varlen prefill and split-K decode) against the torch reference."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")
from gpt2serve import kernels
from gpt2serve.kernels import reference
from gpt2serve.kernels.attention import paged_attention

TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}


def build_batch(shapes, n_head, head_dim, block_size, dtype, device, seed=0):
    """Random cache contents for sequences (seq_len, q_len) with shuffled block tables."""
    gen = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-s // block_size) for s, _ in shapes)
    num_blocks = 1 + sum(-(-s // block_size) for s, _ in shapes) + 3
    free = list(range(1, num_blocks))
    random.Random(seed).shuffle(free)
    k_cache = torch.randn(num_blocks, block_size, n_head, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, n_head, head_dim, generator=gen).to(dtype)
    tables = []
    for seq_len, _ in shapes:
        table = [free.pop() for _ in range(-(-seq_len // block_size))]
        tables.append(table + [0] * (max_blocks - len(table)))
    q_lens = [q for _, q in shapes]
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    query = torch.randn(starts[-1], n_head, head_dim, generator=gen).to(dtype)
    as_int = lambda x: torch.tensor(x, dtype=torch.int32, device=device)
    return dict(
        query=query.to(device),
        k_cache=k_cache.to(device),
        v_cache=v_cache.to(device),
        block_tables=as_int(tables),
        seq_lens=as_int([s for s, _ in shapes]),
        query_start_loc=as_int(starts),
        max_query_len=max(q_lens),
        max_seq_len=max(s for s, _ in shapes),
        scale=head_dim**-0.5,
    )


def assert_matches_reference(batch, dtype, **kwargs) -> None:
    expected = reference.paged_attention(**batch)
    actual = paged_attention(**batch, **kwargs)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


# (seq_len, q_len): full prefill, chunked prefill over a cached prefix, an exact block, decode
# rows, a sequence with no new tokens, a one-token sequence.
def mixed_shapes(block_size: int) -> list[tuple[int, int]]:
    return [(5, 5), (37, 12), (block_size, block_size), (2 * block_size + 1, 1), (20, 3), (9, 0),
            (1, 1)]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("n_head", "head_dim", "block_size"), [(2, 16, 16), (3, 24, 8), (12, 16, 16), (25, 16, 16)]
)
def test_prefill_ragged_chunked_and_mixed(device, dtype, n_head, head_dim, block_size) -> None:
    if n_head == 25 and dtype != torch.float32:
        pytest.skip("25 heads is about indexing; one dtype is enough")
    batch = build_batch(mixed_shapes(block_size), n_head, head_dim, block_size, dtype, device)
    assert_matches_reference(batch, dtype)


@pytest.mark.parametrize(("dtype", "head_dim"), [(torch.float32, 32), (torch.bfloat16, 64)])
def test_prefill_single_long_sequence(device, dtype, head_dim) -> None:
    # batch of one, a query tile boundary inside the sequence, a length past a block boundary
    batch = build_batch([(70, 70)], 2, head_dim, 16, dtype, device, seed=1)
    assert_matches_reference(batch, dtype)


def test_chunked_prefill_equals_one_shot(device) -> None:
    # The same 40 tokens as one prefill, or as chunks 16 + 16 + 8 over the growing cache.
    whole = build_batch([(40, 40)], 2, 16, 8, torch.float32, device, seed=6)
    expected = paged_attention(**whole)
    pieces = []
    for end, q_len in ((16, 16), (32, 16), (40, 8)):
        chunk = dict(whole, query=whole["query"][end - q_len : end], max_query_len=q_len,
                     max_seq_len=end)  # fmt: skip
        chunk["seq_lens"] = torch.tensor([end], dtype=torch.int32, device=device)
        chunk["query_start_loc"] = torch.tensor([0, q_len], dtype=torch.int32, device=device)
        pieces.append(paged_attention(**chunk))
    torch.testing.assert_close(torch.cat(pieces), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_splits", [1, 2, 4])
@pytest.mark.parametrize(("n_head", "head_dim"), [(2, 16), (25, 16), (4, 64)])
def test_decode_with_and_without_split_k(device, num_splits, n_head, head_dim) -> None:
    # lengths at and around block and partition boundaries, and one long enough that every
    # partition of a 4-way split has work
    shapes = [(1, 1), (15, 1), (16, 1), (17, 1), (64, 1), (100, 1), (257, 1)]
    if n_head == 25:
        shapes = shapes[:-1]  # keep the interpreter quick; the 4-head case covers long splits
    batch = build_batch(shapes, n_head, head_dim, 16, torch.float32, device, seed=2)
    assert_matches_reference(batch, torch.float32, num_splits=num_splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_batch_of_one_half_precision(device, dtype) -> None:
    batch = build_batch([(90, 1)], 12, 16, 16, dtype, device, seed=3)
    assert_matches_reference(batch, dtype, num_splits=4)
    assert_matches_reference(batch, dtype, num_splits=1)


def test_decode_split_heuristic_is_off_on_cpu_and_for_short_contexts() -> None:
    from gpt2serve.kernels.attention import choose_num_splits

    assert choose_num_splits(1, 12, 4096, torch.device("cpu")) == 1
    assert choose_num_splits(1, 12, 64, torch.device("cuda")) == 1


def test_launcher_rejects_bad_inputs(device) -> None:
    batch = build_batch([(5, 5)], 2, 16, 16, torch.float32, device)
    with pytest.raises(ValueError, match="disagree"):
        paged_attention(**dict(batch, query_start_loc=batch["query_start_loc"][:1]))
    with pytest.raises(ValueError, match="dtype"):
        paged_attention(**dict(batch, query=batch["query"].half()))
    with pytest.raises(ValueError, match="block_tables"):
        paged_attention(**dict(batch, block_tables=batch["block_tables"].float()))
    with pytest.raises(ValueError, match="does not match"):
        paged_attention(**dict(batch, query=batch["query"][:, :1]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_large_shapes_match_reference(dtype) -> None:
    shapes = [(1024, 1)] * 8 + [(300, 300), (700, 128), (129, 1), (33, 17)]
    batch = build_batch(shapes, 12, 64, 16, dtype, torch.device("cuda"), seed=5)
    assert_matches_reference(batch, dtype)
    atol, rtol = TOLERANCE[dtype]
    dispatched = kernels.paged_attention(**batch)  # the public launcher takes the Triton path
    torch.testing.assert_close(dispatched, paged_attention(**batch), atol=atol, rtol=rtol)


@pytest.mark.gpu
@pytest.mark.parametrize("num_splits", [None, 1, 8])
def test_gpu_decode_gpt2_xl_heads(num_splits) -> None:
    shapes = [(1000, 1), (1, 1), (513, 1), (16, 1)]
    batch = build_batch(shapes, 25, 64, 16, torch.float16, torch.device("cuda"), seed=7)
    assert_matches_reference(batch, torch.float16, num_splits=num_splits)
    batch["max_seq_len"] = 1024  # as a captured CUDA graph passes it
    assert_matches_reference(batch, torch.float16, num_splits=num_splits)
