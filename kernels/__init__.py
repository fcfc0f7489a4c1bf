"""Public kernel launchers: Triton on CUDA tensors (or under TRITON_INTERPRET=1), else torch."""

from __future__ import annotations

import os

import torch

from kernels import reference

__all__ = ["paged_attention", "sample", "triton_enabled", "write_kv_cache"]


def triton_enabled(device: torch.device | str) -> bool:
    """Whether the Triton kernels serve tensors on `device`."""
    if os.environ.get("GPT2SERVE_DISABLE_TRITON") == "1":
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _triton_importable()
    return torch.device(device).type == "cuda" and _triton_importable()


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


write_kv_cache = reference.write_kv_cache
paged_attention = reference.paged_attention
sample = reference.sample
