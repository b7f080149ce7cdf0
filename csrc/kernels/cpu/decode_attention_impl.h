// Two-phase-partition decode attention on the CPU, instantiated once per instruction set by
// decode_attention_avx2.cpp and decode_attention_generic.cpp (namespace CHUNKATTN_CPU_ISA).
//
// Each phase runs blocks of query rows against one chunk at a time: scores, online softmax (running
// max m, running sum l, unnormalised accumulator acc) and an outer-product P·V update held in
// registers. The sequence-first phase (a chunk serves the G query heads of one sequence) reads K/V
// in place; the chunk-first phase (a shared chunk serves every row of every sequence under it)
// converts the chunk to fp32 once, K transposed, and runs all row blocks against it while it is hot
// in cache, so a shared chunk is read from memory once per item instead of once per sequence.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../decode_plan.h"
#include "vec8.h"

namespace chunkattn::cpu::CHUNKATTN_CPU_ISA {

constexpr int kRowBlock = 4;      // rows of the in-place (sequence-first) path
constexpr int kMaxRowBlock = 6;   // rows of the buffered micro-kernel: 12 accumulators + 2 loads
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Geometry {
  int head_dim, chunk_size, num_kv_heads, num_heads, group;
  int64_t token_stride;  // elements between consecutive tokens of one head: head_dim
  int64_t head_stride;   // elements between the kv heads of one chunk: chunk_size * head_dim
  int64_t chunk_stride;  // elements between chunks: num_kv_heads * head_stride
  float scale;
};

// Online-softmax state of up to kRowBlock rows: m, l and acc [rows][head_dim].
struct RowsState {
  float* m;
  float* l;
  float* acc;
};

// ---- one block of R rows against one chunk: scores, online softmax, P·V ------------------------

// Scores from K read straight from the pool, one dot product per (row, token): the sequence-first
// path, where a chunk serves only the G query heads of one sequence. T tokens are scored together
// so that R x T independent FMA chains hide the FMA latency.
template <int R, int T, typename KV>
int scores_direct_block(const Geometry& g, const float* q, const KV* k, int t, int n, float k_scale, float* s,
                        int lds) {
  const int D = g.head_dim;
  for (; t + T <= n; t += T) {
    v8f a[R][T];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < T; ++j) a[r][j] = splat(0.0f);
    for (int d = 0; d < D; d += 8) {
      v8f kb[T];
      for (int j = 0; j < T; ++j) kb[j] = load8(k + (t + j) * g.token_stride + d);
      for (int r = 0; r < R; ++r) {
        const v8f qr = load8(q + r * D + d);
        for (int j = 0; j < T; ++j) a[r][j] += qr * kb[j];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < T; ++j) s[r * lds + t + j] = hsum(a[r][j]) * g.scale * k_scale;
  }
  return t;
}

template <int R, typename KV>
void scores_direct(const Geometry& g, const float* q, const KV* k, int n, float k_scale, float* s, int lds) {
  constexpr int T = R == 1 ? 4 : 2;
  const int t = scores_direct_block<R, T>(g, q, k, 0, n, k_scale, s, lds);
  scores_direct_block<R, 1>(g, q, k, t, n, k_scale, s, lds);
}

// Scores from K transposed to fp32 kt [D][ldk]: an outer-product micro-kernel of R rows x 16
// tokens held in registers, the chunk-first path where one chunk serves many rows.
template <int R>
void scores_transposed(const Geometry& g, const float* q, const float* kt, int ldk, int n, float* s, int lds) {
  const int D = g.head_dim;
  for (int t0 = 0; t0 < n; t0 += 16) {
    v8f a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = splat(0.0f);
    for (int d = 0; d < D; ++d) {
      const v8f b0 = load8(kt + d * ldk + t0), b1 = load8(kt + d * ldk + t0 + 8);
      for (int r = 0; r < R; ++r) {
        const v8f x = splat(q[r * D + d]);
        a0[r] += x * b0;
        a1[r] += x * b1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store8(s + r * lds + t0, a0[r] * splat(g.scale));
      store8(s + r * lds + t0 + 8, a1[r] * splat(g.scale));
    }
  }
}

// Online softmax over the n scores of each row: p = exp(s - m_new) * v_scale written back to s;
// acc and l are rescaled by exp(m_old - m_new).
template <int R>
void softmax_update(const Geometry& g, int n, float v_scale, RowsState st, float* s, int lds) {
  const int D = g.head_dim;
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * lds;
    for (int t = n; t < ((n + 7) & ~7); ++t) sr[t] = kNegInf;
    v8f vmx = splat(kNegInf);
    for (int t = 0; t < n; t += 8) vmx = vmax(vmx, load8(sr + t));
    const float mx = hmax(vmx);
    const float m_new = std::max(st.m[r], mx);
    const float alpha = st.m[r] == kNegInf ? 0.0f : std::exp(st.m[r] - m_new);
    v8f sum = splat(0.0f);
    for (int t = 0; t < n; t += 8) {
      v8f p = exp8(load8(sr + t) - splat(m_new));
      sum += p;
      store8(sr + t, p * splat(v_scale));
    }
    st.l[r] = st.l[r] * alpha + hsum(sum);
    st.m[r] = m_new;
    if (alpha != 1.0f) {
      float* acc = st.acc + r * D;
      for (int d = 0; d < D; d += 8) store8(acc + d, load8(acc + d) * splat(alpha));
    }
  }
}

// acc[r][:] += sum_t p[r][t] * v_t for R rows x W dims held in registers (R x W/8 independent FMA
// chains: W is wider when R is small); v_t at v + t * v_stride.
template <int R, int W, typename VT>
void pv_update_width(const Geometry& g, const VT* v, int64_t v_stride, int n, RowsState st, const float* s,
                     int lds) {
  constexpr int V = W / 8;
  const int D = g.head_dim;
  for (int d = 0; d < D; d += W) {
    v8f o[R][V];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < V; ++i) o[r][i] = load8(st.acc + r * D + d + 8 * i);
    for (int t = 0; t < n; ++t) {
      const VT* vt = v + t * v_stride + d;
      v8f vv[V];
      for (int i = 0; i < V; ++i) vv[i] = load8(vt + 8 * i);
      for (int r = 0; r < R; ++r) {
        const v8f p = splat(s[r * lds + t]);
        for (int i = 0; i < V; ++i) o[r][i] += p * vv[i];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < V; ++i) store8(st.acc + r * D + d + 8 * i, o[r][i]);
  }
}

template <int R, typename VT>
void pv_update(const Geometry& g, const VT* v, int64_t v_stride, int n, RowsState st, const float* s, int lds) {
  if (R == 1 && g.head_dim % 64 == 0) return pv_update_width<R, 64>(g, v, v_stride, n, st, s, lds);
  if (R == 2 && g.head_dim % 32 == 0) return pv_update_width<R, 32>(g, v, v_stride, n, st, s, lds);
  pv_update_width<R, 16>(g, v, v_stride, n, st, s, lds);
}

template <int R, typename KV>
void attend_direct(const Geometry& g, const float* q, const KV* k, const KV* v, int n, float k_scale,
                   float v_scale, RowsState st, float* s, int lds) {
  scores_direct<R>(g, q, k, n, k_scale, s, lds);
  softmax_update<R>(g, n, v_scale, st, s, lds);
  pv_update<R>(g, v, g.token_stride, n, st, s, lds);
}

template <int R>
void attend_buffered(const Geometry& g, const float* q, const float* kt, int ldk, const float* vb, int n,
                     RowsState st, float* s, int lds) {
  scores_transposed<R>(g, q, kt, ldk, n, s, lds);
  softmax_update<R>(g, n, 1.0f, st, s, lds);
  pv_update<R>(g, vb, g.head_dim, n, st, s, lds);
}

// One chunk of one kv head as fp32: kt [D][ldk] transposed and scaled (columns >= n zero up to a
// multiple of 16) and vb [n][D] scaled.
template <typename KV>
void load_chunk(const Geometry& g, const KV* k, const KV* v, int n, float k_scale, float v_scale, float* kt,
                int ldk, float* vb) {
  const int D = g.head_dim;
  int t = 0;
  for (; t + 8 <= n; t += 8) {  // 8 tokens x 8 dims at a time, transposed in registers
    for (int d = 0; d < D; d += 8) {
      v8f x[8];
      for (int i = 0; i < 8; ++i) x[i] = load8(k + (t + i) * g.token_stride + d) * splat(k_scale);
      transpose8(x);
      for (int i = 0; i < 8; ++i) store8(kt + (d + i) * ldk + t, x[i]);
    }
  }
  for (; t < n; ++t) {
    for (int d = 0; d < D; d += 8) {
      const v8f x = load8(k + t * g.token_stride + d) * splat(k_scale);
      for (int i = 0; i < 8; ++i) kt[(d + i) * ldk + t] = x[i];
    }
  }
  for (int tv = 0; tv < n; ++tv) {
    for (int d = 0; d < D; d += 8) store8(vb + tv * D + d, load8(v + tv * g.token_stride + d) * splat(v_scale));
  }
  const int padded = (n + 15) & ~15;
  for (int d = 0; d < D && n < padded; ++d) std::fill(kt + d * ldk + n, kt + d * ldk + padded, 0.0f);
}

// Scratch of one thread for attend_chunks.
struct Scratch {
  float* s;   // [kMaxRowBlock][lds] scores
  float* kt;  // [D][ldk] transposed K of the current chunk
  float* vb;  // [chunk_size][D] V of the current chunk
  int lds, ldk;
};

// Runs `rows` rows (any count) over a list of chunks holding num_tokens tokens of kv head kv_head.
// Few rows read K/V in place; many rows convert each chunk once and share it across row blocks.
template <typename KV>
void attend_chunks(const Geometry& g, const KvPoolView& pool, int kv_head, const float* q, int rows,
                   const int32_t* chunk_ids, int num_chunks, int num_tokens, RowsState st, const Scratch& sc) {
  const KV* k_pool = static_cast<const KV*>(pool.k);
  const KV* v_pool = static_cast<const KV*>(pool.v);
  const int D = g.head_dim;
  const bool buffered = rows > kRowBlock;
  for (int c = 0; c < num_chunks; ++c) {
    const int32_t chunk = chunk_ids[c];
    const int n = std::min(g.chunk_size, num_tokens - c * g.chunk_size);
    if (n <= 0) break;
    const KV* k = k_pool + chunk * g.chunk_stride + kv_head * g.head_stride;
    const KV* v = v_pool + chunk * g.chunk_stride + kv_head * g.head_stride;
    float k_scale = 1.0f, v_scale = 1.0f;
    if (pool.k_scale != nullptr) {
      k_scale = pool.k_scale[static_cast<int64_t>(chunk) * g.num_kv_heads + kv_head];
      v_scale = pool.v_scale[static_cast<int64_t>(chunk) * g.num_kv_heads + kv_head];
    }
    if (!buffered) {
      switch (rows) {
        case 4: attend_direct<4>(g, q, k, v, n, k_scale, v_scale, st, sc.s, sc.lds); break;
        case 3: attend_direct<3>(g, q, k, v, n, k_scale, v_scale, st, sc.s, sc.lds); break;
        case 2: attend_direct<2>(g, q, k, v, n, k_scale, v_scale, st, sc.s, sc.lds); break;
        default: attend_direct<1>(g, q, k, v, n, k_scale, v_scale, st, sc.s, sc.lds); break;
      }
      continue;
    }
    load_chunk(g, k, v, n, k_scale, v_scale, sc.kt, sc.ldk, sc.vb);
    // Balanced row blocks (32 rows -> 6,6,5,5,5,5): a small tail block would be latency-bound.
    const int num_blocks = (rows + kMaxRowBlock - 1) / kMaxRowBlock;
    for (int b = 0, r0 = 0; b < num_blocks; ++b) {
      const int block_rows = rows / num_blocks + (b < rows % num_blocks ? 1 : 0);
      RowsState sub{st.m + r0, st.l + r0, st.acc + static_cast<int64_t>(r0) * D};
      const float* qr = q + static_cast<int64_t>(r0) * D;
      r0 += block_rows;
      switch (block_rows) {
        case 6: attend_buffered<6>(g, qr, sc.kt, sc.ldk, sc.vb, n, sub, sc.s, sc.lds); break;
        case 5: attend_buffered<5>(g, qr, sc.kt, sc.ldk, sc.vb, n, sub, sc.s, sc.lds); break;
        case 4: attend_buffered<4>(g, qr, sc.kt, sc.ldk, sc.vb, n, sub, sc.s, sc.lds); break;
        case 3: attend_buffered<3>(g, qr, sc.kt, sc.ldk, sc.vb, n, sub, sc.s, sc.lds); break;
        case 2: attend_buffered<2>(g, qr, sc.kt, sc.ldk, sc.vb, n, sub, sc.s, sc.lds); break;
        default: attend_buffered<1>(g, qr, sc.kt, sc.ldk, sc.vb, n, sub, sc.s, sc.lds); break;
      }
    }
  }
}

template <typename QT>
void load_row(const QT* src, float* dst, int D) {
  if constexpr (std::is_same_v<QT, float>) {
    std::copy(src, src + D, dst);
  } else {
    for (int d = 0; d < D; d += 8) store8(dst + d, load8(src + d));
  }
}

inline void reset(RowsState st, int rows, int D) {
  std::fill(st.m, st.m + rows, kNegInf);
  std::fill(st.l, st.l + rows, 0.0f);
  std::fill(st.acc, st.acc + static_cast<int64_t>(rows) * D, 0.0f);
}

// Folds a normalised partial result (o, lse) into an online-softmax row.
inline void merge_partial(float& m, float& l, float* acc, const float* o, float lse, int D) {
  if (lse == kNegInf) return;
  const float m_new = std::max(m, lse);
  const float a = m == kNegInf ? 0.0f : std::exp(m - m_new);
  const float b = std::exp(lse - m_new);
  for (int d = 0; d < D; d += 8) store8(acc + d, load8(acc + d) * splat(a) + load8(o + d) * splat(b));
  l = l * a + b;
  m = m_new;
}

template <typename QT, typename KV>
int decode(const KvPoolView& pool, const DecodePlanView& plan, const DecodeProblem& prob, int num_threads) {
  Geometry g;
  g.head_dim = pool.head_dim;
  g.chunk_size = pool.chunk_size;
  g.num_kv_heads = pool.num_kv_heads;
  g.num_heads = prob.num_heads;
  g.group = prob.num_heads / pool.num_kv_heads;
  g.token_stride = pool.head_dim;
  g.head_stride = static_cast<int64_t>(pool.chunk_size) * pool.head_dim;
  g.chunk_stride = g.head_stride * pool.num_kv_heads;
  g.scale = prob.scale;
  const int D = g.head_dim, G = g.group, H = g.num_heads;
  const QT* q = static_cast<const QT*>(prob.q);
  QT* out = static_cast<QT*>(prob.out);
  const int lds = (g.chunk_size + 15) & ~15;
  const int max_rows = std::max(G, plan.max_item_seqs * G);
  const int num_item_units = plan.num_items * g.num_kv_heads;
  const int num_seq_units = plan.num_seqs * g.num_kv_heads;

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> qbuf(static_cast<size_t>(max_rows) * D), acc(static_cast<size_t>(max_rows) * D);
    std::vector<float> m(max_rows), l(max_rows), s(static_cast<size_t>(kMaxRowBlock) * lds);
    std::vector<float> kt(static_cast<size_t>(D) * lds), vb(static_cast<size_t>(g.chunk_size) * D);
    RowsState st{m.data(), l.data(), acc.data()};
    const Scratch sc{s.data(), kt.data(), vb.data(), lds, lds};

    // Phase 1, chunk-first: each (item, kv head) runs all rows of all its sequences.
#pragma omp for schedule(dynamic, 1)
    for (int unit = 0; unit < num_item_units; ++unit) {
      const int item = unit / g.num_kv_heads, kv_head = unit % g.num_kv_heads;
      const int seq_begin = plan.item_seq_begin[item], seq_end = plan.item_seq_end[item];
      const int rows = (seq_end - seq_begin) * G;
      for (int sq = seq_begin; sq < seq_end; ++sq) {
        for (int j = 0; j < G; ++j) {
          const int64_t row = (sq - seq_begin) * G + j;
          load_row(q + (static_cast<int64_t>(sq) * H + kv_head * G + j) * D, qbuf.data() + row * D, D);
        }
      }
      reset(st, rows, D);
      const int32_t first = plan.item_chunk_offset[item];
      attend_chunks<KV>(g, pool, kv_head, qbuf.data(), rows, plan.item_chunk_ids + first,
                        plan.item_chunk_offset[item + 1] - first, plan.item_num_tokens[item], st, sc);
      for (int sq = seq_begin; sq < seq_end; ++sq) {
        const int64_t prow = plan.item_partial_offset[item] + sq - seq_begin;
        for (int j = 0; j < G; ++j) {
          const int row = (sq - seq_begin) * G + j, h = kv_head * G + j;
          float* o = prob.partial_o + (prow * H + h) * D;
          const float inv = l[row] > 0.0f ? 1.0f / l[row] : 0.0f;
          for (int d = 0; d < D; ++d) o[d] = acc[static_cast<int64_t>(row) * D + d] * inv;
          prob.partial_lse[prow * H + h] = l[row] > 0.0f ? m[row] + std::log(l[row]) : kNegInf;
        }
      }
    }

    // Phase 2, sequence-first: each (sequence, kv head) runs its private chunks, then merges.
#pragma omp for schedule(dynamic, 4)
    for (int unit = 0; unit < num_seq_units; ++unit) {
      const int sq = unit / g.num_kv_heads, kv_head = unit % g.num_kv_heads;
      for (int j = 0; j < G; ++j) {
        load_row(q + (static_cast<int64_t>(sq) * H + kv_head * G + j) * D, qbuf.data() + j * D, D);
      }
      reset(st, G, D);
      const int32_t first = plan.seq_chunk_offset[sq];
      attend_chunks<KV>(g, pool, kv_head, qbuf.data(), G, plan.seq_chunk_ids + first,
                        plan.seq_chunk_offset[sq + 1] - first, plan.seq_num_tokens[sq], st, sc);
      for (int p = plan.seq_partial_offset[sq]; p < plan.seq_partial_offset[sq + 1]; ++p) {
        const int64_t prow = plan.seq_partial_rows[p];
        for (int j = 0; j < G; ++j) {
          const int h = kv_head * G + j;
          merge_partial(m[j], l[j], acc.data() + j * D, prob.partial_o + (prow * H + h) * D,
                        prob.partial_lse[prow * H + h], D);
        }
      }
      for (int j = 0; j < G; ++j) {
        QT* o = out + (static_cast<int64_t>(sq) * H + kv_head * G + j) * D;
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        for (int d = 0; d < D; ++d) from_float(acc[j * D + d] * inv, o + d);
      }
    }
  }
  return kOk;
}

inline int decode_attention(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                            const DecodeProblem& prob, int num_threads) {
  if (pool.head_dim % 16 != 0 || pool.head_dim <= 0) return kUnsupportedHeadDim;
  if (pool.chunk_size <= 0) return kUnsupportedChunkSize;
  if (pool.num_kv_heads <= 0 || prob.num_heads % pool.num_kv_heads != 0) return kBadShape;
  const bool int8 = kv_dtype == DType::kInt8;
  if (!int8 && kv_dtype != q_dtype) return kUnsupportedDType;
  if (int8 && (pool.k_scale == nullptr || pool.v_scale == nullptr)) return kBadShape;
  switch (q_dtype) {
    case DType::kFloat32:
      return int8 ? decode<float, int8_t>(pool, plan, prob, num_threads) : decode<float, float>(pool, plan, prob, num_threads);
    case DType::kFloat16:
      return int8 ? decode<fp16_t, int8_t>(pool, plan, prob, num_threads) : decode<fp16_t, fp16_t>(pool, plan, prob, num_threads);
    case DType::kBFloat16:
      return int8 ? decode<bf16_t, int8_t>(pool, plan, prob, num_threads) : decode<bf16_t, bf16_t>(pool, plan, prob, num_threads);
    default:
      return kUnsupportedDType;
  }
}

}  // namespace chunkattn::cpu::CHUNKATTN_CPU_ISA
