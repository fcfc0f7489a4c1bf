"""Copy-on-write block copy: the reference against a loop, Triton against the reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from gpt2serve import kernels
from gpt2serve.kernels.block_copy import copy_blocks_triton
from gpt2serve.kernels.reference import copy_blocks as copy_blocks_reference

# (src, dst): block 2 feeds two dsts; the first and last blocks (0 and 11) are both used.
PAIRS = [(2, 5), (2, 11), (0, 7), (9, 1)]
NUM_BLOCKS = 12


def make_caches(
    num_layers: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random K and V caches, each n_layer x [num_blocks, block_size, n_head, head_dim]."""
    gen = torch.Generator().manual_seed(seed)
    caches = [torch.randn(shape, generator=gen).to(dtype).to(device) for _ in range(2 * num_layers)]
    return caches[:num_layers], caches[num_layers:]


def mapping(pairs: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    return torch.tensor(pairs, dtype=torch.int64, device=device).view(-1, 2)  # [num_pairs, 2]


def clones(caches: list[torch.Tensor]) -> list[torch.Tensor]:
    return [c.clone() for c in caches]


def assert_all_equal(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for layer, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(g, e), f"layer {layer} differs"


def test_reference_matches_a_naive_loop() -> None:
    keys, values = make_caches(3, (NUM_BLOCKS, 4, 3, 8), torch.float32, torch.device("cpu"), 1)
    expected_k, expected_v = clones(keys), clones(values)
    for cache in (*expected_k, *expected_v):
        for src, dst in PAIRS:
            cache[dst] = cache[src].clone()
    copy_blocks_reference(keys, values, mapping(PAIRS, torch.device("cpu")))
    assert_all_equal(keys, expected_k)
    assert_all_equal(values, expected_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [8, 64])
@pytest.mark.parametrize("n_head", [1, 3])
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_triton_matches_reference(device, block_size, n_head, head_dim, dtype) -> None:
    shape = (NUM_BLOCKS, block_size, n_head, head_dim)
    keys, values = make_caches(3, shape, dtype, device, seed=block_size * n_head + head_dim)
    expected_k, expected_v = clones(keys), clones(values)
    block_mapping = mapping(PAIRS, device)
    copy_blocks_reference(expected_k, expected_v, block_mapping)
    copy_blocks_triton(keys, values, block_mapping)
    assert_all_equal(keys, expected_k)
    assert_all_equal(values, expected_v)


def test_triton_on_views_of_the_model_cache_with_int32_pairs(device) -> None:
    # The layout `GPT2LMHeadModel.allocate_kv_cache` returns: [n_layer, 2, num_blocks, ...].
    gen = torch.Generator().manual_seed(3)
    kv_cache = torch.randn(2, 2, NUM_BLOCKS, 3, 2, 8, generator=gen).to(device)
    expected = kv_cache.clone()
    pairs = mapping(PAIRS, device)
    copy_blocks_reference(list(expected[:, 0]), list(expected[:, 1]), pairs)
    copy_blocks_triton(list(kv_cache[:, 0]), list(kv_cache[:, 1]), pairs.to(torch.int32))
    assert torch.equal(kv_cache, expected)


def test_no_pairs_is_a_no_op(device) -> None:
    keys, values = make_caches(2, (4, 3, 2, 8), torch.float32, device, seed=4)
    expected_k, expected_v = clones(keys), clones(values)
    copy_blocks_triton(keys, values, mapping([], device))
    assert_all_equal(keys, expected_k)
    assert_all_equal(values, expected_v)


def test_dispatch_keeps_cpu_tensors_on_the_reference() -> None:
    cpu = torch.device("cpu")
    keys, values = make_caches(2, (NUM_BLOCKS, 3, 2, 8), torch.float32, cpu, seed=5)
    expected_k, expected_v = clones(keys), clones(values)
    copy_blocks_reference(expected_k, expected_v, mapping(PAIRS, cpu))
    kernels.copy_blocks(keys, values, mapping(PAIRS, cpu))
    assert_all_equal(keys, expected_k)
    assert_all_equal(values, expected_v)


def test_launcher_rejects_bad_caches(device) -> None:
    keys, values = make_caches(2, (4, 3, 2, 8), torch.float32, device, seed=6)
    pairs = mapping([(0, 1)], device)
    with pytest.raises(ValueError, match="one length"):
        copy_blocks_triton(keys, values[:1], pairs)
    with pytest.raises(ValueError, match="non-empty"):
        copy_blocks_triton([], [], pairs)
    with pytest.raises(ValueError, match="num_blocks, block_size"):
        copy_blocks_triton([k[0] for k in keys], [v[0] for v in values], pairs)
    with pytest.raises(ValueError, match=r"\(4, 3, 2, 8\)"):
        copy_blocks_triton(keys, [values[0], values[1][:, :2].contiguous()], pairs)
    with pytest.raises(ValueError, match="float32"):
        copy_blocks_triton(keys, [values[0], values[1].half()], pairs)
    with pytest.raises(ValueError, match="contiguous"):
        strided = torch.zeros(4, 3, 2, 16, device=device)[..., :8]
        copy_blocks_triton(keys, [values[0], strided], pairs)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.tensor([0, 1]), r"\[num_pairs, 2\]"),
        (torch.tensor([[0, 1, 2]]), r"\[num_pairs, 2\]"),
        (torch.tensor([[0.0, 1.0]]), "int64"),
        (torch.tensor([[0, 4]]), r"outside \[0, 4\): \[4\]"),
        (torch.tensor([[-1, 2]]), r"outside \[0, 4\): \[-1\]"),
        (torch.tensor([[0, 2], [1, 2]]), "dst block twice"),
        (torch.tensor([[0, 2], [2, 3]]), r"dst blocks \[2\] as a src"),
        (torch.tensor([[1, 1]]), r"dst blocks \[1\] as a src"),
    ],
)
def test_launcher_rejects_bad_mappings(device, bad, match) -> None:
    keys, values = make_caches(2, (4, 3, 2, 8), torch.float32, device, seed=7)
    expected_k = clones(keys)
    with pytest.raises(ValueError, match=match):
        copy_blocks_triton(keys, values, bad.to(device))
    assert_all_equal(keys, expected_k)  # nothing was written


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_copy_at_model_shapes(dtype) -> None:
    cuda = torch.device("cuda")
    kv_cache = torch.randn(12, 2, 256, 16, 12, 64, device=cuda).to(dtype)  # GPT-2 small
    expected = kv_cache.clone()
    dsts = torch.randperm(127, device=cuda)[:40] + 128  # [40]: in [128, 255), none a src
    srcs = torch.randint(0, 128, (40,), device=cuda)  # [40]: repeats likely
    pairs = torch.stack([srcs, dsts], dim=1)  # [40, 2]
    pairs[0] = torch.tensor([0, 255], device=cuda)  # both ends of the cache
    copy_blocks_reference(list(expected[:, 0]), list(expected[:, 1]), pairs)
    kernels.copy_blocks(list(kv_cache[:, 0]), list(kv_cache[:, 1]), pairs)  # the Triton path
    assert torch.equal(kv_cache, expected)
