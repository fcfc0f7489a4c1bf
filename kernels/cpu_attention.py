"""Decode attention on CPU in C++ (csrc/cpu_attention.cpp): KV pages are read in place.

The torch reference copies a sequence's pages out (`index_select`) and reads the copy twice;
the kernel reads each page once, front to back, split over every compute thread by sequence
and head group, 16 lanes wide with AVX-512 (docs/BENCHMARKS.md: 2.4-3.7x the previous kernel at
batch 16 on two cores). It is built with torch's C++ extension JIT on first use (a C++ compiler
and ninja; ~20 s, then cached in TORCH_EXTENSIONS_DIR). Where that fails, `load()` returns None
and the reference serves.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

EXTENSION_NAME = "gpt2serve_cpu_attention_v3"  # bump when the source changes
SOURCE_PATH = Path(__file__).with_name("csrc") / "cpu_attention.cpp"

_module: ModuleType | None = None
_failed = False


STALE_LOCK_SECONDS = 600.0  # a build takes ~30 s; an older lock was left by a killed build


def remove_stale_build_lock(now: float | None = None) -> bool:
    """Delete the build lock a killed build left behind (torch would wait for it forever)."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(EXTENSION_NAME, verbose=False)) / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_SECONDS:
        return False
    logger.warning("removing a stale build lock (%.0f s old): %s", age, lock)
    lock.unlink(missing_ok=True)
    return True


def load() -> ModuleType | None:
    """The compiled extension (built on first call, then cached on disk), or None if it can't be."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    from torch.utils.cpp_extension import load as load_extension

    started = time.monotonic()
    remove_stale_build_lock()
    try:
        _module = load_extension(
            EXTENSION_NAME, sources=[str(SOURCE_PATH)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
        )  # fmt: skip
    except Exception as exc:  # no compiler, no ninja, ...: the torch reference serves
        _failed = True
        logger.warning("CPU attention kernel unavailable (%s); using the torch reference", exc)
        return None
    logger.info("CPU attention kernel ready in %.1fs", time.monotonic() - started)
    return _module


def decode_attention(
    query: torch.Tensor,  # [num_seqs, n_head, head_dim] float32 / bfloat16
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, each >= 1
    scale: float,
) -> torch.Tensor:  # [num_seqs, n_head, head_dim]
    """One query per sequence over its paged context (`load()` must have succeeded)."""
    module = load()
    if module is None:
        raise RuntimeError("the CPU attention kernel is not available")
    num_seqs, n_head, head_dim = query.shape
    if k_cache.shape[2:] != (n_head, head_dim) or v_cache.shape != k_cache.shape:
        raise ValueError("k_cache and v_cache must be [num_blocks, block_size, n_head, head_dim]")
    if query.dtype not in (torch.float32, torch.bfloat16) or k_cache.dtype != query.dtype:
        raise ValueError("query and caches must share a dtype, float32 or bfloat16")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    query = query.contiguous()  # a view into the fused QKV output: 16 x 768 floats to copy
    if block_tables.shape[0] != num_seqs or seq_lens.shape != (num_seqs,):
        raise ValueError("block_tables and seq_lens must have one row per query")
    tables = block_tables.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    if (
        num_seqs
        and not 1 <= int(lens.min()) <= int(lens.max()) <= tables.shape[1] * k_cache.shape[1]
    ):
        raise ValueError("every seq_len must be >= 1 and fit its block table")  # no read past it
    return module.decode_attention(query, k_cache, v_cache, tables, lens, float(scale))
