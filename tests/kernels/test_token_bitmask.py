"""Structured-output token bitmask: the reference against a loop, Triton against the reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from gpt2serve import kernels
from gpt2serve.kernels.bitmask import apply_token_bitmask_triton
from gpt2serve.kernels.reference_sampling import apply_token_bitmask as bitmask_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NEG_INF = float("-inf")


def random_logits(
    num_rows: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int
) -> torch.Tensor:  # [num_rows, vocab]
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(num_rows, vocab, generator=gen) * 3).to(dtype).to(device)


def random_bitmask(num_masks: int, words: int, device: torch.device, seed: int) -> torch.Tensor:
    """[num_masks, words] int32 of random raw bits: about half the words negative (bit 31)."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (num_masks, words), generator=gen, dtype=torch.int64)
    return bits.to(torch.int32).to(device)


def rows(indices: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.int64, device=device)  # [num_masks]


def naive(logits: torch.Tensor, bitmask: torch.Tensor, row_indices: torch.Tensor) -> torch.Tensor:
    """One token at a time, straight from the format's definition."""
    out = logits.clone()  # [num_rows, vocab]
    words = bitmask.shape[1]
    for mask_id, row in enumerate(row_indices.tolist()):
        for token in range(logits.shape[1]):
            word = token // 32
            allowed = word < words and (int(bitmask[mask_id, word]) >> (token % 32)) & 1 == 1
            if not allowed:
                out[row, token] = NEG_INF
    return out


@pytest.mark.parametrize("words", [0, 2, 3, 5])  # 70 tokens need 3 words
@pytest.mark.parametrize("row_list", [[1, 4, 0], [2], [3, 3]])  # [3, 3]: both masks apply
def test_reference_matches_a_naive_loop(words, row_list) -> None:
    cpu = torch.device("cpu")
    logits = random_logits(5, 70, torch.float32, cpu, seed=words)
    bitmask = random_bitmask(len(row_list), words, cpu, seed=len(row_list))
    expected = naive(logits, bitmask, rows(row_list, cpu))
    bitmask_reference(logits, bitmask, rows(row_list, cpu))
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra_words", [-1, 0, 2])  # fewer bits than the vocab, exact, more
@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100])
def test_triton_matches_reference(device, vocab, extra_words, dtype) -> None:
    words = max(0, -(-vocab // 32) + extra_words)
    logits = random_logits(6, vocab, dtype, device, seed=vocab)
    original = logits.clone()
    bitmask = random_bitmask(3, words, device, seed=vocab + extra_words)
    row_indices = rows([4, 0, 2], device)
    expected = logits.clone()
    bitmask_reference(expected, bitmask, row_indices)
    apply_token_bitmask_triton(logits, bitmask, row_indices)
    assert torch.equal(logits, expected)
    untouched = [1, 3, 5]
    assert torch.equal(logits[untouched], original[untouched])  # bit-exact


def test_triton_at_gpt2_vocab(device) -> None:
    logits = random_logits(4, 50257, torch.float32, device, seed=1)
    bitmask = random_bitmask(2, 1571, device, seed=2)  # exactly covers 50,257 tokens
    bitmask[1, -1] = -1  # bits past the vocab set: ignored
    row_indices = rows([3, 1], device)
    expected = logits.clone()
    bitmask_reference(expected, bitmask, row_indices)
    apply_token_bitmask_triton(logits, bitmask, row_indices)
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_allowed_and_all_forbidden(device, dtype) -> None:
    logits = random_logits(3, 100, dtype, device, seed=3)
    original = logits.clone()
    bitmask = torch.tensor([[-1] * 4, [0] * 4], dtype=torch.int32, device=device)  # [2, 4]
    apply_token_bitmask_triton(logits, bitmask, rows([0, 2], device))
    assert torch.equal(logits[:2], original[:2])  # row 0 all allowed, row 1 unmasked
    assert torch.equal(logits[2], torch.full_like(logits[2], NEG_INF))


def test_bit_31_alone(device) -> None:
    logits = random_logits(1, 64, torch.float32, device, seed=4)
    original = logits.clone()
    # Word 0 = bit 31 only (negative as int32); word 1 = bits 0 and 31.
    bitmask = torch.tensor([[-(2**31), -(2**31) + 1]], dtype=torch.int32, device=device)
    apply_token_bitmask_triton(logits, bitmask, rows([0], device))
    allowed = [31, 32, 63]
    assert torch.equal(logits[0, allowed], original[0, allowed])
    assert int(torch.isinf(logits).sum()) == 64 - len(allowed)


def test_triton_on_strided_rows_with_int32_indices(device) -> None:
    wide = random_logits(4, 80, torch.float16, device, seed=5)
    logits = wide[:, 3:60]  # [4, 57]; row stride 80
    bitmask = random_bitmask(6, 4, device, seed=6)[::2, 1:]  # [3, 3]; row stride 8
    expected = logits.clone()
    bitmask_reference(expected, bitmask, rows([3, 0, 1], device))
    before = wide.clone()
    apply_token_bitmask_triton(logits, bitmask, rows([3, 0, 1], device).to(torch.int32))
    assert torch.equal(logits, expected)
    assert torch.equal(wide[:, :3], before[:, :3]) and torch.equal(wide[:, 60:], before[:, 60:])


def test_a_row_masked_twice_gets_the_intersection(device) -> None:
    logits = random_logits(2, 40, torch.float32, device, seed=7)
    bitmask = random_bitmask(2, 2, device, seed=8)
    expected = naive(logits.cpu(), bitmask.cpu(), rows([1, 1], torch.device("cpu")))
    apply_token_bitmask_triton(logits, bitmask, rows([1, 1], device))
    assert torch.equal(logits.cpu(), expected)


def test_no_masks_is_a_no_op(device) -> None:
    logits = random_logits(2, 40, torch.float32, device, seed=9)
    original = logits.clone()
    empty = torch.zeros(0, 2, dtype=torch.int32, device=device)
    apply_token_bitmask_triton(logits, empty, rows([], device))
    bitmask_reference(logits, empty, rows([], device))
    assert torch.equal(logits, original)


def test_dispatch_keeps_cpu_tensors_on_the_reference() -> None:
    cpu = torch.device("cpu")
    logits = random_logits(3, 50, torch.bfloat16, cpu, seed=10)
    bitmask = random_bitmask(2, 2, cpu, seed=11)
    expected = naive(logits, bitmask, rows([2, 0], cpu))
    kernels.apply_token_bitmask(logits, bitmask, rows([2, 0], cpu))
    assert torch.equal(logits, expected)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"logits": torch.zeros(4, 40, dtype=torch.float64)}, "float32, float16 or bfloat16"),
        ({"logits": torch.zeros(4 * 40)}, r"\[num_rows, vocab\]"),
        ({"logits": torch.zeros(40, 4).t()}, "contiguous last dim"),
        ({"bitmask": torch.zeros(2, 2, dtype=torch.int64)}, "int32"),
        ({"bitmask": torch.zeros(4, dtype=torch.int32)}, r"\[num_masks, words\]"),
        ({"bitmask": torch.zeros(4, 2, dtype=torch.int32).t()}, "contiguous last dim"),
        ({"row_indices": torch.tensor([0, 1, 2])}, r"row_indices must be \[2\]"),
        ({"row_indices": torch.tensor([[0, 1]])}, r"row_indices must be \[2\]"),
        ({"row_indices": torch.tensor([0.0, 1.0])}, "int64"),
        ({"row_indices": torch.tensor([0, 4])}, r"outside \[0, 4\): \[4\]"),
        ({"row_indices": torch.tensor([-1, 2])}, r"outside \[0, 4\): \[-1\]"),
    ],
)
def test_launcher_rejects_bad_inputs(device, change, match) -> None:
    args = {
        "logits": torch.zeros(4, 40),
        "bitmask": torch.zeros(2, 2, dtype=torch.int32),
        "row_indices": torch.tensor([0, 1]),
    } | change
    args = {name: tensor.to(device) for name, tensor in args.items()}
    logits = args["logits"].clone()
    with pytest.raises(ValueError, match=match):
        apply_token_bitmask_triton(**args)
    assert torch.equal(args["logits"], logits)  # nothing was written


def test_launcher_rejects_other_devices(device) -> None:
    if device.type == "cpu":
        pytest.skip("needs a second device")
    logits = torch.zeros(4, 40, device=device)
    bitmask = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="bitmask must be on cuda"):
        apply_token_bitmask_triton(logits, bitmask, torch.tensor([0, 1], device=device))
    with pytest.raises(ValueError, match="row_indices must be on cuda"):
        apply_token_bitmask_triton(logits, bitmask.to(device), torch.tensor([0, 1]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra_words", [-1, 1])
@pytest.mark.parametrize("vocab", [1, 33, 4097, 50257])
def test_gpu_matches_reference(vocab, extra_words, dtype) -> None:
    cuda = torch.device("cuda")
    logits = random_logits(256, vocab, dtype, cuda, seed=vocab)
    words = -(-vocab // 32) + extra_words
    bitmask = random_bitmask(200, words + 1, cuda, seed=12)[:, :words]  # row stride words + 1
    row_indices = torch.randperm(256, device=cuda)[:200]  # [200]: 56 rows unmasked
    expected = logits.clone()
    bitmask_reference(expected, bitmask, row_indices)
    kernels.apply_token_bitmask(logits, bitmask, row_indices)  # the Triton path
    assert torch.equal(logits, expected)
