"""Triton KV write against the torch reference, and the dispatch rule of `kernels`."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from gpt2serve import kernels
from gpt2serve.kernels import reference
from gpt2serve.kernels.kv_cache import write_kv_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kv_write_matches_reference_and_skips_padding(device, dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    key = (
        torch.randn(7, 3, 16, generator=gen).to(dtype).to(device)
    )  # [num_tokens, n_head, head_dim]
    value = torch.randn(7, 3, 16, generator=gen).to(dtype).to(device)
    slots = torch.tensor([3, 17, -1, 0, 31, 8, -1], device=device)  # [num_tokens] int64
    # Non-zero caches: a skipped slot must keep what it held.
    caches = [torch.randn(4, 8, 3, 16, generator=gen).to(dtype).to(device) for _ in range(2)]
    expected = [c.clone() for c in caches]
    reference.write_kv_cache(key, value, expected[0], expected[1], slots)
    write_kv_cache(key, value, caches[0], caches[1], slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


def test_kv_write_casts_to_the_cache_dtype_and_takes_int32_slots(device) -> None:
    key = torch.randn(4, 2, 24, device=device)
    value = torch.randn(4, 2, 24, device=device)
    slots = torch.tensor([5, 0, 9, 2], device=device)
    k1, v1, k2, v2 = (
        torch.zeros(2, 8, 2, 24, dtype=torch.float16, device=device) for _ in range(4)
    )
    reference.write_kv_cache(key, value, k1, v1, slots)
    write_kv_cache(key, value, k2, v2, slots.to(torch.int32))
    assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_kv_write_from_a_fused_qkv_view(device) -> None:
    qkv = torch.randn(5, 3 * 2 * 16, device=device)  # [num_tokens, 3 * n_embd]
    _, key, value = qkv.view(5, 3, 2, 16).unbind(1)  # strided rows, as the model produces
    slots = torch.arange(5, device=device) * 3
    k1, v1, k2, v2 = (torch.zeros(2, 8, 2, 16, device=device) for _ in range(4))
    reference.write_kv_cache(key, value, k1, v1, slots)
    write_kv_cache(key, value, k2, v2, slots)
    assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_kv_write_of_no_tokens_is_a_no_op(device) -> None:
    cache = torch.zeros(2, 4, 2, 16, device=device)
    empty = torch.zeros(0, 2, 16, device=device)
    write_kv_cache(
        empty, empty, cache, cache.clone(), torch.zeros(0, dtype=torch.long, device=device)
    )
    assert not cache.any()


def test_kv_write_rejects_bad_layouts(device) -> None:
    key = torch.zeros(3, 2, 16, device=device)
    cache = torch.zeros(2, 4, 2, 16, device=device)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv_cache(key, key, cache, cache, torch.zeros(2, dtype=torch.long, device=device))
    slots = torch.zeros(3, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="does not match"):
        write_kv_cache(key, key, torch.zeros(2, 4, 3, 16, device=device), cache, slots)
    with pytest.raises(ValueError, match="contiguous"):
        strided = torch.zeros(2, 4, 2, 32, device=device)[..., :16]
        write_kv_cache(key, key, strided, strided, slots)
    with pytest.raises(ValueError, match="rows"):
        transposed = torch.zeros(3, 16, 2, device=device).transpose(1, 2)
        write_kv_cache(transposed, key, cache, cache, slots)
    with pytest.raises(ValueError, match="int64"):
        write_kv_cache(key, key, cache, cache, slots.float())


def test_dispatch_keeps_cpu_tensors_on_the_reference() -> None:
    assert not kernels.triton_enabled("cpu")
    kernels.disable_triton()
    try:
        assert not kernels.triton_enabled("cuda")
    finally:
        kernels.disable_triton(False)
    assert kernels.triton_enabled("cuda") == kernels._triton_importable()


@pytest.mark.gpu
def test_gpu_kv_write_at_model_shapes() -> None:
    key = torch.randn(300, 12, 64, device="cuda", dtype=torch.float16)
    value = torch.randn_like(key)
    slots = torch.randperm(64 * 16, device="cuda")[:300]
    slots[::7] = -1
    caches = [torch.zeros(64, 16, 12, 64, device="cuda", dtype=torch.float16) for _ in range(4)]
    reference.write_kv_cache(key, value, caches[0], caches[1], slots)
    kernels.write_kv_cache(key, value, caches[2], caches[3], slots)  # the dispatching launcher
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
