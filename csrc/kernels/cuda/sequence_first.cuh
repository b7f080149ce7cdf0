// Phase 2 of the two-phase partition (sequence-first) and the log-sum-exp merge. One block per
// (sequence, kv head, 16 query heads of the group).
//
// The block's rows are the G query heads of one kv head of one sequence (up to 16; larger groups get
// more blocks along z). Its four warps split the sequence's private tokens, tile t going to warp
// t % 4, each warp with its own K/V tile in shared memory and its own online-softmax state (a
// flash-decoding split inside the block). At the end the warps' states and the sequence's chunk-first
// partial rows are merged by the log-sum-exp rule and the output row is written in the query dtype.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../decode_plan.h"
#include "tile_load.cuh"
#include "warp_attend.cuh"

namespace chunkattn::cuda {

template <typename T, int D>
struct SequenceFirstLayout {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileTokens = 16;
  static constexpr int kLd = tile_ld<T, D>();
  static constexpr int kLdp = kTileTokens + 4;
  static constexpr size_t kQTileBytes = size_t{16} * kLd * sizeof(T);
  static constexpr size_t kWarpKvBytes = 2 * size_t{kTileTokens} * kLd * sizeof(T);  // k_s | v_s of a warp
  static constexpr size_t kMergeBytes = size_t{kWarps} * 16 * D * sizeof(float);     // per-warp O at the end
  static constexpr size_t kMainBytes =
      kWarps * kWarpKvBytes > kMergeBytes ? kWarps * kWarpKvBytes : kMergeBytes;
  static constexpr size_t kPTileBytes = size_t{16} * kLdp * sizeof(float);  // per warp
  static constexpr int kStatFloats = 3 * kWarps * 16 + 2 * 16;  // per-warp m, l, weight; row max, 1/l
  // Shared memory: q_s | K/V tiles of each warp, reused for the merge | p_s[kWarps] | stats.
  static constexpr size_t kSmemBytes =
      kQTileBytes + kMainBytes + kWarps * kPTileBytes + kStatFloats * sizeof(float);
};

// grid: (num_seqs, num_kv_heads, ceil(group / 16)); block: kThreads.
template <typename T, typename KV, int D>
__global__ void __launch_bounds__(SequenceFirstLayout<T, D>::kThreads)
    sequence_first_kernel(KvPoolView pool, DecodePlanView plan, DecodeProblem problem, int group) {
  using L = SequenceFirstLayout<T, D>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int seq = blockIdx.x, kv_head = blockIdx.y;
  const int row_begin = 16 * blockIdx.z;  // first query head of the block within the group
  const int num_rows = min(16, group - row_begin);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int num_heads = problem.num_heads;

  unsigned char* main_area = smem + L::kQTileBytes;
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = reinterpret_cast<T*>(main_area + warp * L::kWarpKvBytes);
  T* v_s = k_s + L::kTileTokens * L::kLd;
  float* p_s = reinterpret_cast<float*>(main_area + L::kMainBytes + warp * L::kPTileBytes);
  float* warp_m =
      reinterpret_cast<float*>(main_area + L::kMainBytes + L::kWarps * L::kPTileBytes);  // [kWarps][16]
  float* warp_l = warp_m + L::kWarps * 16;                                               // [kWarps][16]
  float* warp_weight = warp_l + L::kWarps * 16;                                          // [kWarps][16]
  float* row_m = warp_weight + L::kWarps * 16;                                           // [16]
  float* row_inv_l = row_m + 16;                                                         // [16]

  // The row list of one sequence: rows 0..group-1 are its query heads kv_head * group + row.
  load_q_tile<T, D, L::kThreads>(q_s, static_cast<const T*>(problem.q), num_heads, group, kv_head, seq,
                                 row_begin, group, tid);
  __syncthreads();

  TileState<D> st;
  st.reset();
  const int32_t* chunk_ids = plan.seq_chunk_ids + plan.seq_chunk_offset[seq];
  const int num_tokens = plan.seq_num_tokens[seq];
  const int num_tiles = (num_tokens + L::kTileTokens - 1) / L::kTileTokens;
  const float scale_log2 = problem.scale * kLog2e;
  for (int tile = warp; tile < num_tiles; tile += L::kWarps) {
    const int t0 = tile * L::kTileTokens;
    const int n = min(L::kTileTokens, num_tokens - t0);
    load_kv_tile<T, KV, D, L::kTileTokens, 32>(k_s, v_s, pool, chunk_ids, kv_head, t0, n, lane);
    cp_async_wait_all();
    __syncwarp();
    attend_tile<T, D, L::kTileTokens>(st, q_s, k_s, v_s, L::kLd, n, scale_log2, p_s);
    __syncwarp();  // the tile is consumed before the next load overwrites it
  }
  __syncthreads();  // all K/V tiles are dead: main_area now holds the warps' O

  float* merge_o = reinterpret_cast<float*>(main_area);  // [kWarps][16][D], unnormalised
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    float* o = merge_o + (warp * 16 + row) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<float2*>(o + 8 * j + 2 * t) = make_float2(st.o[j][2 * r], st.o[j][2 * r + 1]);
    if (t == 0) {
      warp_m[warp * 16 + row] = st.m[r];
      warp_l[warp * 16 + row] = st.l[r];
    }
  }
  __syncthreads();

  // Log-sum-exp merge of the warps' states and the chunk-first partial rows, all in the log2 domain.
  const int partial_begin = plan.seq_partial_offset[seq], partial_end = plan.seq_partial_offset[seq + 1];
  const int64_t head_begin = static_cast<int64_t>(kv_head) * group + row_begin;
  if (tid < num_rows) {
    const int row = tid;
    const int64_t head = head_begin + row;
    float m = -INFINITY;
    for (int w = 0; w < L::kWarps; ++w) m = fmaxf(m, warp_m[w * 16 + row]);
    for (int p = partial_begin; p < partial_end; ++p) {
      const int64_t partial_row = plan.seq_partial_rows[p];
      m = fmaxf(m, problem.partial_lse[partial_row * num_heads + head] * kLog2e);
    }
    float l = 0.0f;
    for (int w = 0; w < L::kWarps; ++w) {
      const float wm = warp_m[w * 16 + row];
      const float weight = wm == -INFINITY ? 0.0f : exp2f(wm - m);
      warp_weight[w * 16 + row] = weight;
      l += warp_l[w * 16 + row] * weight;
    }
    for (int p = partial_begin; p < partial_end; ++p) {
      const int64_t partial_row = plan.seq_partial_rows[p];
      const float lse = problem.partial_lse[partial_row * num_heads + head] * kLog2e;
      l += lse == -INFINITY ? 0.0f : exp2f(lse - m);  // a partial row is normalised: its own l is 1
    }
    row_m[row] = m;
    row_inv_l[row] = l > 0.0f ? 1.0f / l : 0.0f;  // no token at all: the output row is 0
  }
  __syncthreads();

  T* out = static_cast<T*>(problem.out);
  for (int e = tid; e < num_rows * D; e += L::kThreads) {
    const int row = e / D, d = e % D;
    const int64_t head = head_begin + row;
    float acc = 0.0f;
    for (int w = 0; w < L::kWarps; ++w) acc += merge_o[(w * 16 + row) * D + d] * warp_weight[w * 16 + row];
    for (int p = partial_begin; p < partial_end; ++p) {
      const int64_t partial_row = plan.seq_partial_rows[p];
      const float lse = problem.partial_lse[partial_row * num_heads + head] * kLog2e;
      if (lse == -INFINITY) continue;
      acc += problem.partial_o[(partial_row * num_heads + head) * D + d] * exp2f(lse - row_m[row]);
    }
    out[(static_cast<int64_t>(seq) * num_heads + head) * D + d] = from_float<T>(acc * row_inv_l[row]);
  }
}

}  // namespace chunkattn::cuda
