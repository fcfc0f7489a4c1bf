"""Linear layers tuned for CPU serving, from measurements on one core (docs/BENCHMARKS.md).

fp32, 1-3 rows: BLAS on the weight stored transposed ([in, out] contiguous), which streams from
DRAM fastest (~15-17 GB/s against ~13 for the [out, in] layout). From 4 rows, and for bf16 at
any size: oneDNN's prepacked weight on plain dense tensors (`mkldnn._linear_pointwise`, as
inductor emits it), ~1.5x the fp32 GFLOP/s of BLAS at 16 rows and AMX for bf16 where the CPU
has it. No layout conversions per call (the older `to_mkldnn`/`to_dense` route cost ~7 ms of a
batch-16 step).

oneDNN keeps ~0.6 MiB of generated code per weight shape for every row count it has seen, for
good (its cache-capacity settings do not bound it): serving every prompt length up to 2048
tokens would grow the process by gigabytes (docs/BENCHMARKS.md, soak). Rows are therefore
padded up to one of 8 sizes per doubling (`padded_rows`: 72 sizes up to 2048), which bounds
that memory and costs at most 1/8 extra rows.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

PACKED_FROM_ROWS = 4  # fp32: below this, BLAS on the transposed layout wins
_PACK_FOR_ROWS = 16  # the packing's tuning hint; within a few % of the best from 4 to 512 rows


@functools.cache
def packed_linear_available() -> bool:
    """Whether this torch has oneDNN's prepacked dense linear."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops._linear_pointwise, "binary")  # the fused residual add
        and hasattr(ops, "_reorder_linear_weight")
    )


def pack(weight: torch.Tensor) -> torch.Tensor:  # opaque oneDNN layout of [out, in]
    """A prepacked copy of a `[out, in]` weight for `linear_packed`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_FOR_ROWS)


def padded_rows(rows: int) -> int:
    """The row count oneDNN sees: exact to 16, then 8 sizes per doubling (<= 1/8 extra rows)."""
    if rows <= 16:
        return rows
    step = 1 << (rows.bit_length() - 4)  # rows in [2^k, 2^(k+1)) -> multiples of 2^(k-3)
    return -(-rows // step) * step


def linear_packed(
    x: torch.Tensor,  # [rows, in]
    packed: torch.Tensor,
    bias: torch.Tensor | None,  # [out]
    epilogue: str = "none",
) -> torch.Tensor:  # [rows, out]
    """x @ W.T + bias through the prepacked weight, on `padded_rows` rows; `epilogue` "gelu"
    applies GELU (tanh form) to the result inside the same oneDNN call."""
    rows = x.shape[0]
    x = _padded(x)  # [padded, in]
    algorithm = "tanh" if epilogue == "gelu" else ""
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, epilogue, [], algorithm)
    return out[:rows]  # [rows, out]: a contiguous prefix


def linear_packed_add(
    x: torch.Tensor,  # [rows, in]
    packed: torch.Tensor,
    bias: torch.Tensor | None,  # [out]
    residual: torch.Tensor,  # [rows, out]
) -> torch.Tensor:  # [rows, out]
    """residual + x @ W.T + bias, the add inside the oneDNN call (one pass, one rounding)."""
    rows = x.shape[0]
    linear = torch.ops.mkldnn._linear_pointwise.binary
    return linear(_padded(x), _padded(residual), packed, bias, "add")[:rows]


def _padded(x: torch.Tensor) -> torch.Tensor:  # [padded_rows(rows), cols], contiguous
    rows = x.shape[0]
    padded = padded_rows(rows)
    if padded != rows:
        x = F.pad(x, (0, 0, 0, padded - rows))  # zero rows
    return x.contiguous()


def uses_packed(x: torch.Tensor) -> bool:
    """bf16 always; fp32 from `PACKED_FROM_ROWS` rows."""
    return x.dtype != torch.float32 or x.shape[0] >= PACKED_FROM_ROWS


class CpuLinear(nn.Module):
    """Shares the original Linear's parameters (names and values unchanged) plus a packed copy."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with torch.no_grad():
            # Same shape and values; the storage becomes [in, out], so F.linear's x @ W.T is
            # BLAS on a contiguous matrix: the fast layout for a single row.
            linear.weight.data = linear.weight.data.t().contiguous().t()
        self.weight = linear.weight
        self.bias = linear.bias
        self._packed = pack(linear.weight)

    def forward(
        self,
        x: torch.Tensor,  # [rows, in_features]
        gelu: bool = False,
        residual: torch.Tensor | None = None,  # [rows, out_features]
    ) -> torch.Tensor:  # [rows, out_features]
        """`[residual +] [gelu](x @ W.T + b)`, the epilogue inside oneDNN on the packed path."""
        if not self.runs_packed(x):
            return unfused_epilogues(F.linear(x, self.weight, self.bias), gelu, residual)
        if residual is not None and not gelu:
            return linear_packed_add(x, self._packed, self.bias, residual)
        out = linear_packed(x, self._packed, self.bias, "gelu" if gelu else "none")
        return unfused_epilogues(out, False, residual)

    def runs_packed(self, x: torch.Tensor) -> bool:
        """Whether `x` goes through the packed oneDNN weight (serving, enough rows or bf16)."""
        return not torch.is_grad_enabled() and uses_packed(x)


def unfused_epilogues(
    out: torch.Tensor,  # [rows, out_features]: a linear's result
    gelu: bool,
    residual: torch.Tensor | None,  # [rows, out_features]
) -> torch.Tensor:  # [rows, out_features]
    """`[residual +] [gelu](out)` as separate torch ops, where oneDNN does not fuse them."""
    out = F.gelu(out, approximate="tanh") if gelu else out
    return out if residual is None else residual + out


def linear_gelu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:  # [rows, out_features]
    """GELU (tanh form, HF's gelu_new) of `linear(x)`; one oneDNN call on the packed path,
    where the separate GELU pass over the [rows, 4 * n_embd] activations cost ~7% of a step."""
    if isinstance(linear, CpuLinear):
        return linear(x, gelu=True)
    return unfused_epilogues(linear(x), True, None)


def linear_add(
    linear: nn.Module,
    x: torch.Tensor,  # [rows, in_features]
    residual: torch.Tensor,  # [rows, out_features]
) -> torch.Tensor:  # [rows, out_features]
    """`residual + linear(x)`, the add fused into the oneDNN call on the packed path."""
    if isinstance(linear, CpuLinear):
        return linear(x, residual=residual)
    return unfused_epilogues(linear(x), False, residual)


def optimize_for_cpu(model: nn.Module) -> int:
    """Swap every fp32/bf16 CPU nn.Linear for a CpuLinear; returns how many were swapped.

    Serving only: the packed copy is not updated if the weights change afterwards.
    """
    if not packed_linear_available():
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.weight.device.type == "cpu"
                and child.weight.dtype in (torch.float32, torch.bfloat16)
            ):
                setattr(parent, name, CpuLinear(child))
                swapped += 1
    return swapped


class CpuVocabProjection:
    """hidden @ weight.T for the tied lm_head on CPU, from cached re-laid-out copies.

    fp32, 1-3 rows: BLAS on a contiguous [n_embd, vocab] transpose (~1.2x faster than the
    tied [vocab, n_embd] layout); otherwise the prepacked oneDNN copy. Copies are rebuilt if
    the weight is modified in place (tensor version counter).
    """

    def __init__(self) -> None:
        self._version = -1
        self._transposed: torch.Tensor | None = None  # [n_embd, vocab]
        self._packed: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> CpuVocabProjection:
        """A copy of the model starts with empty caches (a packed tensor cannot be copied)."""
        return CpuVocabProjection()

    def __call__(
        self,
        hidden: torch.Tensor,  # [rows, n_embd]
        weight: torch.Tensor,  # [vocab, n_embd]
    ) -> torch.Tensor:  # [rows, vocab]
        """Project hidden states onto the vocabulary (each layout is made on first use)."""
        if self._version != weight._version:
            self._transposed = self._packed = None
            self._version = weight._version
        packable = weight.dtype in (torch.float32, torch.bfloat16) and packed_linear_available()
        if packable and not torch.is_grad_enabled() and uses_packed(hidden):
            if self._packed is None:
                self._packed = pack(weight)
            return linear_packed(hidden, self._packed, None)
        if self._transposed is None:
            self._transposed = weight.detach().t().contiguous()
        return torch.mm(hidden, self._transposed)
