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
