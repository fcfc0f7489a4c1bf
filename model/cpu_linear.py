"""Linear layers tuned for CPU serving: oneDNN prepacked weights for multi-row batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Below this many rows plain BLAS gemv wins; from here oneDNN's packed layout is ~1.5x faster.
MIN_PACKED_ROWS = 8


class CpuLinear(nn.Module):
    """Shares the original Linear's parameters (names unchanged) plus a prepacked copy."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        with torch.no_grad():
            self._packed_weight = linear.weight.detach().to_mkldnn()  # [out, in], oneDNN layout
            self._packed_bias = (
                linear.bias.detach().to_mkldnn() if linear.bias is not None else None
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [rows, out_features]
        """x: [rows, in_features]."""
        if x.shape[0] < MIN_PACKED_ROWS or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        packed = torch._C._nn.mkldnn_linear(
            x.contiguous().to_mkldnn(), self._packed_weight, self._packed_bias
        )
        return packed.to_dense()


def optimize_for_cpu(model: nn.Module) -> int:
    """Swap every fp32 CPU nn.Linear for a CpuLinear; returns how many were swapped.

    Serving only: the packed copy is not updated if the weights change afterwards.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch._C._nn, "mkldnn_linear")):
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            is_plain = type(child) is nn.Linear
            if (
                is_plain
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
            ):
                setattr(parent, name, CpuLinear(child))
                swapped += 1
    return swapped


class CpuVocabProjection:
    """hidden @ weight.T for the tied lm_head on CPU, from cached re-laid-out copies.

    One row: BLAS on a contiguous [n_embd, vocab] transpose (~1.5x faster than the
    transposed view); 8+ rows: oneDNN's packed layout (~1.4-2x faster again). Copies are
    rebuilt if the weight is modified in place (tensor version counter).
    """

    def __init__(self) -> None:
        self._version = -1
        self._transposed: torch.Tensor | None = None  # [n_embd, vocab]
        self._packed: torch.Tensor | None = None  # [vocab, n_embd], oneDNN layout

    def __call__(
        self,
        hidden: torch.Tensor,  # [rows, n_embd]
        weight: torch.Tensor,  # [vocab, n_embd]
    ) -> torch.Tensor:  # [rows, vocab]
        """Project hidden states onto the vocabulary."""
        if self._version != weight._version or self._transposed is None:
            with torch.no_grad():
                self._transposed = weight.detach().t().contiguous()
                usable = weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                self._packed = weight.detach().to_mkldnn() if usable else None
            self._version = weight._version
        packed_ok = self._packed is not None and not torch.is_grad_enabled()
        if hidden.shape[0] >= MIN_PACKED_ROWS and packed_ok:
            return torch._C._nn.mkldnn_linear(
                hidden.contiguous().to_mkldnn(), self._packed, None
            ).to_dense()
        return torch.mm(hidden, self._transposed)
