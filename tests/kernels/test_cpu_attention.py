"""The C++ CPU decode attention against the torch reference: odd shapes, ragged lengths,
block boundaries, shuffled pages, both dtypes, and the launcher's checks."""

from __future__ import annotations

import os

import pytest
import torch

from gpt2serve import kernels
from gpt2serve.kernels import cpu_attention, reference

needs_kernel = pytest.mark.skipif(
    cpu_attention.load() is None, reason="no C++ toolchain to build the CPU attention kernel"
)


def test_the_kernel_builds_in_ci() -> None:
    """CI has a C++ compiler and ninja: there a failed build is a failure, never a skip."""
    if os.environ.get("CI") != "true":
        pytest.skip("only CI promises a toolchain")
    assert cpu_attention.load() is not None


def paged(
    seq_lens: list[int], n_head: int, head_dim: int, block_size: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, ...]:
    """query [B, H, D], caches with shuffled pages (block 0 unused), block tables, lengths."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks) + 3
    pages = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = torch.zeros(len(seq_lens), max(blocks) + 2, dtype=torch.int32)  # padded wider
    for row, count in enumerate(blocks):
        tables[row, :count] = torch.tensor([pages.pop() for _ in range(count)])
    shape = (num_blocks, block_size, n_head, head_dim)
    k_cache = (torch.randn(shape, generator=gen) * 2).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    query = torch.randn(len(seq_lens), n_head, head_dim, generator=gen).to(dtype)
    return query, k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32)


@needs_kernel
@pytest.mark.parametrize(
    ("seq_lens", "n_head", "head_dim", "block_size"),
    [
        ([1], 1, 1, 1),
        ([1, 4, 5, 6, 11, 37], 3, 20, 5),  # lengths on, before and after block boundaries
        ([16, 17, 31, 32, 33], 12, 64, 16),  # GPT-2's heads
        ([300, 2, 129], 25, 64, 16),  # gpt2-xl's 25 heads
        ([7] * 9, 2, 128, 3),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(seq_lens, n_head, head_dim, block_size, dtype) -> None:
    query, k_cache, v_cache, tables, lens = paged(seq_lens, n_head, head_dim, block_size, dtype, 3)
    scale = head_dim**-0.5
    expected = reference._decode_attention(query, k_cache, v_cache, tables, lens, scale)
    actual = cpu_attention.decode_attention(query, k_cache, v_cache, tables, lens, scale)
    assert actual.dtype == dtype and actual.shape == query.shape
    tolerance = 2e-6 if dtype == torch.float32 else 1e-2  # bf16: the output's own rounding
    torch.testing.assert_close(actual.float(), expected.float(), atol=tolerance, rtol=tolerance)


@needs_kernel
def test_strided_query_and_mixed_batches_through_the_dispatcher() -> None:
    """A query viewed out of fused QKV, and prefill rows beside decode rows (`kernels` API)."""
    n_head, head_dim, block_size = 4, 16, 4
    query, k_cache, v_cache, tables, lens = paged([9, 3, 14], n_head, head_dim, block_size,
                                                  torch.float32, 5)  # fmt: skip
    qkv = torch.randn(query.shape[0], 3, n_head, head_dim)  # [tokens, 3, H, D]
    qkv[:, 0] = query
    strided = qkv.unbind(1)[0]
    assert not strided.is_contiguous()
    scale = 0.25
    expected = reference._decode_attention(query, k_cache, v_cache, tables, lens, scale)
    actual = cpu_attention.decode_attention(strided, k_cache, v_cache, tables, lens, scale)
    torch.testing.assert_close(actual, expected, atol=2e-6, rtol=2e-6)
    # Sequence 0 prefills 4 new tokens (a chunk over a cached prefix), 1 and 2 decode one each.
    q_lens = [4, 1, 1]
    mixed_query = torch.randn(sum(q_lens), n_head, head_dim)
    starts = torch.tensor([0, 4, 5, 6], dtype=torch.int32)
    args = (mixed_query, k_cache, v_cache, tables, lens, starts, 4, int(lens.max()), scale)
    plain = reference.paged_attention(*args)
    assert kernels.use_cpu_attention_kernel()
    try:
        served = kernels.paged_attention(*args)
    finally:
        kernels.use_cpu_attention_kernel(False)
    torch.testing.assert_close(served, plain, atol=2e-6, rtol=2e-6)


@needs_kernel
def test_launcher_rejects_what_would_read_out_of_bounds() -> None:
    query, k_cache, v_cache, tables, lens = paged([5, 6], 2, 8, 4, torch.float32, 1)
    good = (query, k_cache, v_cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="fit its block table"):
        cpu_attention.decode_attention(*good[:4], torch.tensor([5, 4 * tables.shape[1] + 1]), 1.0)
    with pytest.raises(ValueError, match=">= 1"):
        cpu_attention.decode_attention(*good[:4], torch.tensor([5, 0]), 1.0)
    with pytest.raises(ValueError, match="share a dtype"):
        cpu_attention.decode_attention(query.bfloat16(), *good[1:])
    strided = torch.zeros(*k_cache.shape[:-1], 2 * k_cache.shape[-1])[..., ::2]
    with pytest.raises(ValueError, match="contiguous"):
        cpu_attention.decode_attention(query, strided, strided, *good[3:])
    with pytest.raises(ValueError, match="one row per query"):
        cpu_attention.decode_attention(query, k_cache, v_cache, tables[:1], lens, 1.0)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch) -> None:
    """A build killed mid-way leaves `lock`; torch would then wait forever at every start."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    from torch.utils.cpp_extension import _get_build_directory

    lock = (
        __import__("pathlib").Path(
            _get_build_directory(cpu_attention.EXTENSION_NAME, verbose=False)
        )
        / "lock"
    )
    lock.touch()
    mtime = lock.stat().st_mtime
    assert not cpu_attention.remove_stale_build_lock(now=mtime + 60) and lock.exists()
    assert cpu_attention.remove_stale_build_lock(now=mtime + 3600) and not lock.exists()
    assert not cpu_attention.remove_stale_build_lock()  # nothing left to remove
