// Decode attention on CPU: one query per sequence over its paged K/V, read in place.
//
// A work item is one sequence and a group of its heads (all of them once the batch gives every
// thread two sequences, fewer at small batches so that every thread has work). An item walks
// its pages token by token, so each page is read front to back (the hardware prefetcher's best
// case) with software prefetch a few rows ahead of the block-table jumps. With AVX-512 the dot
// products, the softmax's exp and the weighted sum of V run 16 lanes wide (bf16 widened to fp32
// in registers); elsewhere a portable loop computes the same thing. Accumulation is fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

struct Problem {  // one launch: shapes and the paged layout
  int64_t n_head, head_dim, block_size, max_blocks;
  float scale;
};

struct Item {  // one sequence, heads [0, num_heads) of the pointers below
  int64_t num_heads, seq_len;
  const int32_t* table;
};

template <typename T>
static inline const T* token_row(const Problem& pb, const Item& it, const T* cache, int64_t pos) {
  const int64_t page = it.table[pos / pb.block_size];
  return cache + (page * pb.block_size + pos % pb.block_size) * pb.n_head * pb.head_dim;
}

// Portable path ---------------------------------------------------------------------------
static inline float widen(float x) { return x; }
static inline float widen(c10::BFloat16 x) { return static_cast<float>(x); }

template <typename T>
static void group_portable(const Problem& pb, const Item& it, const T* q, const T* k_cache,
                           const T* v_cache, T* out, float* probs, float* acc) {
  const int64_t d_n = pb.head_dim, len = it.seq_len;
  for (int64_t h = 0; h < it.num_heads; ++h) {
    float* p = probs + h * len;
    float top = -INFINITY;
    for (int64_t pos = 0; pos < len; ++pos) {
      const T* k = token_row(pb, it, k_cache, pos) + h * d_n;
      float s = 0.f;
      for (int64_t d = 0; d < d_n; ++d) s += widen(q[h * d_n + d]) * pb.scale * widen(k[d]);
      p[pos] = s;
      top = std::max(top, s);
    }
    float sum = 0.f;
    for (int64_t pos = 0; pos < len; ++pos) sum += (p[pos] = std::exp(p[pos] - top));
    float* a = acc + h * d_n;
    std::fill(a, a + d_n, 0.f);
    for (int64_t pos = 0; pos < len; ++pos) {
      const T* v = token_row(pb, it, v_cache, pos) + h * d_n;
      const float w = p[pos] / sum;
      for (int64_t d = 0; d < d_n; ++d) a[d] += w * widen(v[d]);
    }
    for (int64_t d = 0; d < d_n; ++d) out[h * d_n + d] = static_cast<T>(a[d]);
  }
}

#if defined(__AVX512F__)
// AVX-512 path: head_dim = 16 * NV ----------------------------------------------------------
constexpr int64_t kPrefetchRows = 3;  // tokens ahead: enough to hide a page jump's miss

static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const c10::BFloat16* p) {  // bf16 -> fp32: shift into the top half
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

static inline __m512 exp16(__m512 x) {  // Cephes expf (~1 ulp); scalef underflows to 0
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

template <typename T>
static inline void prefetch_row(const Problem& pb, const Item& it, const T* cache, int64_t pos,
                                int64_t count) {
  if (pos >= it.seq_len) return;
  const char* row = reinterpret_cast<const char*>(token_row(pb, it, cache, pos));
  for (int64_t off = 0; off < count * static_cast<int64_t>(sizeof(T)); off += 64)
    _mm_prefetch(row + off, _MM_HINT_T0);
}

static void softmax_in_place(float* p, int64_t len) {
  __m512 top = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
  const int64_t full = len / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (len - full)) - 1);
  for (int64_t pos = 0; pos < full; pos += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(p + pos));
  top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, p + full));
  top = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  for (int64_t pos = 0; pos < full; pos += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + pos), top));
    _mm512_storeu_ps(p + pos, e);
    sum = _mm512_add_ps(sum, e);
  }
  const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p + full), top));
  sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(tail, e));
  _mm512_mask_storeu_ps(p + full, tail, e);
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
  for (int64_t pos = 0; pos < len; pos += 16) {
    const __mmask16 lanes = pos + 16 <= len ? static_cast<__mmask16>(0xFFFF) : tail;
    _mm512_mask_storeu_ps(p + pos, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, p + pos), inv));
  }
}

template <int NV, typename T>
static void group_avx512(const Problem& pb, const Item& it, const T* q, const T* k_cache,
                         const T* v_cache, T* out, float* probs, float* acc) {
  constexpr int64_t d_n = 16 * NV;
  const int64_t heads = it.num_heads, len = it.seq_len, width = heads * d_n;
  float* query = acc;  // the accumulator's space holds the scaled query until the V pass
  for (int64_t i = 0; i < width; i += 16)
    _mm512_storeu_ps(query + i, _mm512_mul_ps(load16(q + i), _mm512_set1_ps(pb.scale)));
  for (int64_t pos = 0; pos < len; ++pos) {  // scores, token by token
    prefetch_row(pb, it, k_cache, pos + kPrefetchRows, width);
    const T* k = token_row(pb, it, k_cache, pos);
    for (int64_t h = 0; h < heads; ++h) {
      __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(query + h * d_n), load16(k + h * d_n));
      for (int j = 1; j < NV; ++j)
        dot = _mm512_fmadd_ps(_mm512_loadu_ps(query + h * d_n + 16 * j),
                              load16(k + h * d_n + 16 * j), dot);
      probs[h * len + pos] = _mm512_reduce_add_ps(dot);
    }
  }
  for (int64_t h = 0; h < heads; ++h) softmax_in_place(probs + h * len, len);
  for (int64_t i = 0; i < width; i += 16) _mm512_storeu_ps(acc + i, _mm512_setzero_ps());
  for (int64_t pos = 0; pos < len; ++pos) {  // probabilities times V, token by token
    prefetch_row(pb, it, v_cache, pos + kPrefetchRows, width);
    const T* v = token_row(pb, it, v_cache, pos);
    for (int64_t h = 0; h < heads; ++h) {
      const __m512 w = _mm512_set1_ps(probs[h * len + pos]);
      for (int j = 0; j < NV; ++j) {
        float* a = acc + h * d_n + 16 * j;
        _mm512_storeu_ps(a, _mm512_fmadd_ps(w, load16(v + h * d_n + 16 * j), _mm512_loadu_ps(a)));
      }
    }
  }
  for (int64_t i = 0; i < width; ++i) out[i] = static_cast<T>(acc[i]);
}
#endif

template <typename T>
using GroupFn = void (*)(const Problem&, const Item&, const T*, const T*, const T*, T*, float*,
                         float*);

template <typename T>
static GroupFn<T> choose(int64_t head_dim) {
#if defined(__AVX512F__)
  switch (head_dim) {
    case 32: return group_avx512<2, T>;
    case 64: return group_avx512<4, T>;  // every GPT-2 size
    case 80: return group_avx512<5, T>;
    case 96: return group_avx512<6, T>;
    case 128: return group_avx512<8, T>;
    default: break;
  }
#endif
  return group_portable<T>;
}

template <typename T>
static void decode_all(const torch::Tensor& query, const torch::Tensor& k_cache,
                       const torch::Tensor& v_cache, const torch::Tensor& block_tables,
                       const torch::Tensor& seq_lens, double scale, torch::Tensor& out) {
  const int64_t num_seqs = query.size(0);
  const Problem pb{query.size(1), query.size(2), k_cache.size(1), block_tables.size(1),
                   static_cast<float>(scale)};
  const int64_t threads = at::get_num_threads();
  const int64_t wanted_groups = num_seqs >= 2 * threads ? 1 : (2 * threads + num_seqs - 1) / num_seqs;
  const int64_t per_group = (pb.n_head + std::min(wanted_groups, pb.n_head) - 1) /
                            std::min(wanted_groups, pb.n_head);
  const int64_t groups = (pb.n_head + per_group - 1) / per_group;
  const int64_t max_len = seq_lens.max().item<int32_t>();
  const int64_t row = pb.n_head * pb.head_dim;
  const T* q = query.data_ptr<T>();
  const T* kc = k_cache.data_ptr<T>();
  const T* vc = v_cache.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const GroupFn<T> group_fn = choose<T>(pb.head_dim);
  at::parallel_for(0, num_seqs * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> probs(max_len * per_group), acc(per_group * pb.head_dim);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t i = index / groups, first_head = index % groups * per_group;
      const Item it{std::min(per_group, pb.n_head - first_head), lens[i], tables + i * pb.max_blocks};
      const int64_t offset = first_head * pb.head_dim;
      group_fn(pb, it, q + i * row + offset, kc + offset, vc + offset, o + i * row + offset,
               probs.data(), acc.data());
    }
  });
}

}  // namespace

torch::Tensor decode_attention(torch::Tensor query, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor block_tables, torch::Tensor seq_lens, double scale) {
  auto out = torch::empty_like(query);
  if (query.size(0) == 0) return out;
  if (query.scalar_type() == at::kFloat) {  // the launcher allows float32 and bfloat16 only
    decode_all<float>(query, k_cache, v_cache, block_tables, seq_lens, scale, out);
  } else {
    decode_all<c10::BFloat16>(query, k_cache, v_cache, block_tables, seq_lens, scale, out);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged decode attention on CPU");
}
