"""LayerNorm keeps few CPU rows on one thread and gives nn.LayerNorm's results bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpt2serve.model import layer_norm
from gpt2serve.model.layer_norm import ONE_THREAD_MAX_ROWS, LayerNorm


@pytest.mark.parametrize("rows", [1, 5, 16, ONE_THREAD_MAX_ROWS, ONE_THREAD_MAX_ROWS + 1, 700])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_as_nn_layer_norm(rows: int, dtype: torch.dtype) -> None:
    torch.manual_seed(rows)
    ours, plain = LayerNorm(96, eps=1e-5).to(dtype), nn.LayerNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    plain.load_state_dict(ours.state_dict())  # same parameter names as nn.LayerNorm
    hidden = torch.randn(rows, 96).to(dtype)  # [rows, n_embd]
    with torch.no_grad():
        assert torch.equal(ours(hidden), plain(hidden))


def test_threads_used_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    forward = nn.LayerNorm.forward
    monkeypatch.setattr(
        nn.LayerNorm,
        "forward",
        lambda self, x: (seen.append(torch.get_num_threads()), forward(self, x))[1],
    )
    threads = torch.get_num_threads()
    norm = LayerNorm(8)
    norm(torch.randn(ONE_THREAD_MAX_ROWS, 8))
    norm(torch.randn(ONE_THREAD_MAX_ROWS + 1, 8))
    assert seen == [1, threads]
    assert torch.get_num_threads() == threads


def test_threads_are_restored_when_the_op_fails() -> None:
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        LayerNorm(8)(torch.randn(4, 9))  # wrong width
    assert torch.get_num_threads() == threads
    with layer_norm.one_cpu_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
