"""Triton KV write and paged attention against the torch reference."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")
from kernels import reference
from kernels.attention import paged_attention
from kernels.kv_cache import write_kv_cache

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("n_head", "head_dim", "block_size"), [(2, 16, 16), (3, 24, 8), (12, 16, 16)]
)
def test_prefill_ragged_chunked_and_mixed(device, dtype, n_head, head_dim, block_size) -> None:
    # full prefill, chunked prefill over a cached prefix, decode rows, block-boundary lengths
    shapes = [(5, 5), (37, 12), (block_size, block_size), (2 * block_size + 1, 1), (20, 3), (1, 1)]
    batch = build_batch(shapes, n_head, head_dim, block_size, dtype, device)
    assert_matches_reference(batch, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_single_long_sequence(device, dtype) -> None:
    batch = build_batch([(70, 70)], 2, 32, 16, dtype, device, seed=1)
    assert_matches_reference(batch, dtype)


@pytest.mark.parametrize("num_splits", [1, 2, 4])
@pytest.mark.parametrize(("n_head", "head_dim"), [(2, 16), (25, 16), (4, 64)])
def test_decode_with_and_without_split_k(device, num_splits, n_head, head_dim) -> None:
    shapes = [(1, 1), (15, 1), (16, 1), (17, 1), (100, 1), (64, 1)]
    batch = build_batch(shapes, n_head, head_dim, 16, torch.float32, device, seed=2)
    assert_matches_reference(batch, torch.float32, num_splits=num_splits)


def test_decode_batch_of_one_half_precision(device) -> None:
    batch = build_batch([(90, 1)], 12, 16, 16, torch.float16, device, seed=3)
    assert_matches_reference(batch, torch.float16, num_splits=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_write_matches_reference_and_skips_padding(device, dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    key = torch.randn(7, 3, 16, generator=gen).to(dtype).to(device)
    value = torch.randn(7, 3, 16, generator=gen).to(dtype).to(device)
    slots = torch.tensor([3, 17, -1, 0, 31, 8, -1], device=device)
    caches = [torch.zeros(4, 8, 3, 16, dtype=dtype, device=device) for _ in range(4)]
    reference.write_kv_cache(key, value, caches[0], caches[1], slots)
    write_kv_cache(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_kv_write_from_a_fused_qkv_view(device) -> None:
    qkv = torch.randn(5, 3 * 2 * 16, device=device)
    _, key, value = qkv.view(5, 3, 2, 16).unbind(1)  # strided rows, as the model produces
    slots = torch.arange(5, device=device) * 3
    k1, v1, k2, v2 = (torch.zeros(2, 8, 2, 16, device=device) for _ in range(4))
    reference.write_kv_cache(key, value, k1, v1, slots)
    write_kv_cache(key, value, k2, v2, slots)
    assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_launchers_reject_bad_shapes(device) -> None:
    key = torch.zeros(3, 2, 16, device=device)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv_cache(
            key,
            key,
            torch.zeros(2, 4, 2, 16),
            torch.zeros(2, 4, 2, 16),
            torch.zeros(2, dtype=torch.long),
        )
    batch = build_batch([(5, 5)], 2, 16, 16, torch.float32, device)
    batch["query_start_loc"] = batch["query_start_loc"][:1]
    with pytest.raises(ValueError, match="disagree"):
        paged_attention(**batch)


@pytest.mark.gpu
def test_gpu_large_shapes_match_reference() -> None:
    shapes = [(1024, 1)] * 8 + [(300, 300), (700, 128)]
    batch = build_batch(shapes, 12, 64, 16, torch.float16, torch.device("cuda"), seed=5)
    assert_matches_reference(batch, torch.float16)
