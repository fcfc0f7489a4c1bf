"""Decode attention on CPU in C++: each sequence reads its KV pages in place.

The torch reference copies a sequence's pages out (`index_select`) and then reads the copy
twice; at batch 16 this kernel reads every page once, a page row (all heads) at a time, with the
query and the output accumulator in L1: ~2x faster from batch 16, ~4.5x at batch 1 (one core,
DRAM-resident caches; docs/BENCHMARKS.md). It is built from the source below with torch's C++
extension JIT on first use (a C++ compiler and ninja; ~20 s, then cached in
TORCH_EXTENSIONS_DIR). Where that fails, `load()` returns None and the reference serves.
"""

from __future__ import annotations

import logging
import time
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

EXTENSION_NAME = "gpt2serve_cpu_attention_v2"  # bump when the source changes
_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// Loads that vectorize: bf16 widens to fp32 by a 16-bit shift of its raw bits.
static inline float load(const float* p, int64_t i) { return p[i]; }
static inline float load(const c10::BFloat16* p, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

template <typename T>
static void _decode_attention_kernel(
    const T* q, const T* k_cache, const T* v_cache, const int32_t* table, int64_t seq_len,
    int64_t block_size, int64_t n_head, int64_t head_dim, float scale, T* out,
    std::vector<float>& query, std::vector<float>& probs, std::vector<float>& acc) {
  const int64_t row = n_head * head_dim;  // one token's K (or V) for every head
  for (int64_t i = 0; i < row; ++i) query[i] = load(q, i) * scale;
  probs.resize(n_head * seq_len);
  const int64_t num_blocks = (seq_len + block_size - 1) / block_size;
  for (int64_t b = 0; b < num_blocks; ++b) {  // scores, page row by page row
    const T* page = k_cache + static_cast<int64_t>(table[b]) * block_size * row;
    const int64_t tokens = std::min(block_size, seq_len - b * block_size);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t pos = b * block_size + t;
      for (int64_t h = 0; h < n_head; ++h) {
        const T* k = page + t * row + h * head_dim;
        const float* qh = query.data() + h * head_dim;
        float s = 0.f;
        #pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < head_dim; ++d) s += qh[d] * load(k, d);
        probs[h * seq_len + pos] = s;
      }
    }
  }
  for (int64_t h = 0; h < n_head; ++h) {  // softmax over the context, per head
    float* p = probs.data() + h * seq_len;
    float top = -INFINITY;
    for (int64_t i = 0; i < seq_len; ++i) top = std::max(top, p[i]);
    float sum = 0.f;
    for (int64_t i = 0; i < seq_len; ++i) { p[i] = std::exp(p[i] - top); sum += p[i]; }
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < seq_len; ++i) p[i] *= inv;
  }
  std::fill(acc.begin(), acc.end(), 0.f);
  for (int64_t b = 0; b < num_blocks; ++b) {  // probabilities times V, page row by page row
    const T* page = v_cache + static_cast<int64_t>(table[b]) * block_size * row;
    const int64_t tokens = std::min(block_size, seq_len - b * block_size);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t pos = b * block_size + t;
      for (int64_t h = 0; h < n_head; ++h) {
        const float w = probs[h * seq_len + pos];
        const T* v = page + t * row + h * head_dim;
        float* a = acc.data() + h * head_dim;
        #pragma omp simd
        for (int64_t d = 0; d < head_dim; ++d) a[d] += w * load(v, d);
      }
    }
  }
  for (int64_t i = 0; i < row; ++i) out[i] = static_cast<T>(acc[i]);
}

template <typename T>
static void decode_all(torch::Tensor query, torch::Tensor k_cache, torch::Tensor v_cache,
                       torch::Tensor block_tables, torch::Tensor seq_lens, double scale,
                       torch::Tensor out) {
  const int64_t num_seqs = query.size(0), n_head = query.size(1), head_dim = query.size(2);
  const int64_t block_size = k_cache.size(1), max_blocks = block_tables.size(1);
  const T* q = query.data_ptr<T>();
  const T* kc = k_cache.data_ptr<T>();
  const T* vc = v_cache.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  at::parallel_for(0, num_seqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query_f(n_head * head_dim), probs, acc(n_head * head_dim);
    for (int64_t i = begin; i < end; ++i) {
      _decode_attention_kernel<T>(
          q + i * n_head * head_dim, kc, vc, tables + i * max_blocks, lens[i], block_size,
          n_head, head_dim, static_cast<float>(scale), o + i * n_head * head_dim, query_f,
          probs, acc);
    }
  });
}

torch::Tensor decode_attention(torch::Tensor query, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor block_tables, torch::Tensor seq_lens, double scale) {
  auto out = torch::empty_like(query);
  if (query.scalar_type() == at::kFloat) {  // the launcher allows float32 and bfloat16 only
    decode_all<float>(query, k_cache, v_cache, block_tables, seq_lens, scale, out);
  } else {
    decode_all<c10::BFloat16>(query, k_cache, v_cache, block_tables, seq_lens, scale, out);
  }
  return out;
}
"""

_module: ModuleType | None = None
_failed = False


def load() -> ModuleType | None:
    """The compiled extension (built on first call, then cached on disk), or None if it can't be."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    from torch.utils.cpp_extension import load_inline

    started = time.monotonic()
    try:
        _module = load_inline(
            EXTENSION_NAME, cpp_sources=_SOURCE, functions=["decode_attention"],
            extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
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
