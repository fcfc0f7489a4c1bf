"""The CPU linear routes: row padding bounds oneDNN's per-shape memory without changing rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2serve.model import cpu_linear

needs_packed = pytest.mark.skipif(
    not cpu_linear.packed_linear_available(), reason="this torch has no oneDNN packed linear"
)


def test_padded_rows_are_few_and_never_smaller() -> None:
    sizes = {cpu_linear.padded_rows(rows) for rows in range(1, 2049)}
    assert len(sizes) == 72  # 1-16 exact, then 8 per doubling up to 2048
    for rows in range(1, 2049):
        assert rows <= cpu_linear.padded_rows(rows) <= rows * 9 / 8
    assert [cpu_linear.padded_rows(r) for r in (1, 16, 17, 33, 65, 513, 2047)] == [
        1, 16, 18, 36, 72, 576, 2048
    ]  # fmt: skip


@needs_packed
@pytest.mark.parametrize("rows", [4, 9, 17, 65, 100, 513])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_call_matches_f_linear(rows: int, dtype: torch.dtype) -> None:
    torch.manual_seed(rows)
    weight = torch.randn(48, 40).to(dtype)  # [out, in]
    bias = torch.randn(48).to(dtype)
    x = torch.randn(rows, 40).to(dtype)  # [rows, in]
    with torch.no_grad():
        out = cpu_linear.linear_packed(x, cpu_linear.pack(weight), bias)
    assert out.shape == (rows, 48) and out.is_contiguous()
    expected = F.linear(x.float(), weight.float(), bias.float())
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


@needs_packed
def test_a_row_does_not_depend_on_how_many_rows_come_with_it() -> None:
    """Row 0 is the same bits whatever the batch around it (the engine's batch invariance)."""
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 32), torch.randn(64)
    packed = cpu_linear.pack(weight)
    x = torch.randn(16, 32)  # [16, in]: every count below 16 runs unpadded
    with torch.no_grad():
        together = cpu_linear.linear_packed(x, packed, bias)
        apart = [cpu_linear.linear_packed(x[:n], packed, bias)[0] for n in range(4, 16)]
    for row in apart:
        torch.testing.assert_close(row, together[0], atol=0, rtol=0)


def test_the_lm_head_layouts_are_made_at_start_up() -> None:
    """Both row routes' copies exist before any request: memory does not jump at the first
    small batch (+150 MiB at gpt2 size in the soak) and results are unchanged."""
    from gpt2serve.model.config import named_config
    from gpt2serve.model.weights import random_model

    model = random_model(named_config("tiny"), "cpu", torch.float32, seed=0)
    projection = model._cpu_projection
    assert projection._transposed is None and projection._packed is None
    model.prepare_cpu_projection()
    assert projection._transposed is not None
    assert projection._packed is not None or not cpu_linear.packed_linear_available()
    hidden = torch.randn(5, model.config.n_embd)
    with torch.no_grad():
        expected = F.linear(hidden, model.lm_head_weight)
        torch.testing.assert_close(model.compute_logits(hidden), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.compute_logits(hidden[:1]), expected[:1], atol=1e-4,
                                   rtol=1e-4)  # fmt: skip


def _cpu_linear(dtype: torch.dtype, seed: int = 0) -> cpu_linear.CpuLinear:
    torch.manual_seed(seed)
    return cpu_linear.CpuLinear(torch.nn.Linear(40, 48).to(dtype))


@needs_packed
@pytest.mark.parametrize("rows", [1, 3, 4, 17, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gelu_and_residual_add_match_the_unfused_ops(rows: int, dtype: torch.dtype) -> None:
    linear = _cpu_linear(dtype, rows)
    x, residual = torch.randn(rows, 40).to(dtype), torch.randn(rows, 48).to(dtype)
    plain = F.linear(x.float(), linear.weight.float(), linear.bias.float())  # [rows, 48]
    gelu = F.gelu(plain, approximate="tanh")
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    with torch.no_grad():
        cases = [
            (cpu_linear.linear_gelu(linear, x), gelu),
            (cpu_linear.linear_add(linear, x, residual), residual.float() + plain),
            (linear(x, gelu=True, residual=residual), residual.float() + gelu),
        ]
    for out, expected in cases:
        assert out.shape == (rows, 48) and out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_plain_linears_get_the_same_epilogues() -> None:
    """On a GPU (no CpuLinear) the helpers are the plain ops, in the same order as before."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 48)
    x, residual = torch.randn(5, 40), torch.randn(5, 48)
    with torch.no_grad():
        expected_gelu = F.gelu(linear(x), approximate="tanh")
        expected_add = residual + linear(x)
        assert torch.equal(cpu_linear.linear_gelu(linear, x), expected_gelu)
        assert torch.equal(cpu_linear.linear_add(linear, x, residual), expected_add)


@needs_packed
def test_fused_rows_do_not_depend_on_how_many_rows_come_with_them() -> None:
    """fp32 from 4 rows, as the unfused route promises (the engine's batch invariance); bf16
    kernels differ by CPU (AMX, AVX512-BF16 or neither), so no bit-level promise there."""
    linear = _cpu_linear(torch.float32)
    x, residual = torch.randn(16, 40), torch.randn(16, 48)
    with torch.no_grad():
        for fused in (
            lambda n: cpu_linear.linear_gelu(linear, x[:n]),
            lambda n: cpu_linear.linear_add(linear, x[:n], residual[:n]),
        ):
            together = fused(16)
            for n in range(cpu_linear.PACKED_FROM_ROWS, 16):
                assert torch.equal(fused(n)[0], together[0])
