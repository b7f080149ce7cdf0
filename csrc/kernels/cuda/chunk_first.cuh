// Phase 1 of the two-phase partition (chunk-first). One block per (item, kv head, 64 rows).
//
// The rows of an item are its sequences times the G query heads of the kv head: row R is query head
// kv_head * G + R % G of sequence item_seq_begin + R / G. The block walks the item's tokens in tiles
// of kTileTokens; each tile of K and V is loaded into shared memory once and all four warps run their
// own 16 rows against it on tensor cores, so a shared chunk is read once per 64 rows, not once per
// sequence (items wider than 64 rows get more blocks along z, which meet the same tile in L2).
// Output per row: the normalised partial_o row and its log-sum-exp (natural log; -inf when empty).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../decode_plan.h"
#include "tile_load.cuh"
#include "warp_attend.cuh"

namespace chunkattn::cuda {

template <typename T, int D>
struct ChunkFirstLayout {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;  // rows per block
  static constexpr int kTileTokens = 32;
  static constexpr int kLd = tile_ld<T, D>();
  static constexpr int kLdp = kTileTokens + 4;
  static constexpr size_t kKvTileBytes = size_t{kTileTokens} * kLd * sizeof(T);  // K or V
  static constexpr size_t kQTileBytes = size_t{16} * kLd * sizeof(T);            // per warp
  static constexpr size_t kPTileBytes = size_t{16} * kLdp * sizeof(float);       // per warp
  // Shared memory: k_s | v_s | q_s[kWarps] | p_s[kWarps].
  static constexpr size_t kSmemBytes = 2 * kKvTileBytes + kWarps * (kQTileBytes + kPTileBytes);
};

// grid: (num_items, num_kv_heads, ceil(max_item_seqs * group / kRows)); block: kThreads.
template <typename T, typename KV, int D>
__global__ void __launch_bounds__(ChunkFirstLayout<T, D>::kThreads)
    chunk_first_kernel(KvPoolView pool, DecodePlanView plan, DecodeProblem problem, int group) {
  using L = ChunkFirstLayout<T, D>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int item = blockIdx.x, kv_head = blockIdx.y;
  const int seq_begin = plan.item_seq_begin[item];
  const int num_rows = (plan.item_seq_end[item] - seq_begin) * group;
  const int block_row = blockIdx.z * L::kRows;
  if (block_row >= num_rows) return;  // the grid is sized for the widest item (whole block leaves)

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int warp_row = block_row + 16 * warp;
  const bool active = warp_row < num_rows;  // idle warps still help load the tiles
  T* k_s = reinterpret_cast<T*>(smem);
  T* v_s = reinterpret_cast<T*>(smem + L::kKvTileBytes);
  T* q_s = reinterpret_cast<T*>(smem + 2 * L::kKvTileBytes + warp * L::kQTileBytes);
  float* p_s = reinterpret_cast<float*>(smem + 2 * L::kKvTileBytes + L::kWarps * L::kQTileBytes +
                                        warp * L::kPTileBytes);
  const int num_heads = problem.num_heads;
  if (active) {
    load_q_tile<T, D, 32>(q_s, static_cast<const T*>(problem.q), num_heads, group, kv_head, seq_begin,
                          warp_row, num_rows, lane);
  }
  __syncwarp();

  TileState<D> st;
  st.reset();
  const int32_t* chunk_ids = plan.item_chunk_ids + plan.item_chunk_offset[item];
  const int num_tokens = plan.item_num_tokens[item];
  const float scale_log2 = problem.scale * kLog2e;
  for (int t0 = 0; t0 < num_tokens; t0 += L::kTileTokens) {
    const int n = min(L::kTileTokens, num_tokens - t0);
    __syncthreads();  // every warp is done with the previous tile
    load_kv_tile<T, KV, D, L::kTileTokens, L::kThreads>(k_s, v_s, pool, chunk_ids, kv_head, t0, n, tid);
    cp_async_wait_all();
    __syncthreads();
    if (active) attend_tile<T, D, L::kTileTokens>(st, q_s, k_s, v_s, L::kLd, n, scale_log2, p_s);
  }
  if (!active) return;

  // partial_o: [num_partial_rows, num_heads, D]; partial_lse: [num_partial_rows, num_heads].
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp_row + g + 8 * r;
    if (row >= num_rows) continue;
    const int64_t partial_row = plan.item_partial_offset[item] + row / group;
    const int64_t head = static_cast<int64_t>(kv_head) * group + row % group;
    const float inv_l = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
    float* o = problem.partial_o + (partial_row * num_heads + head) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<float2*>(o + 8 * j + 2 * t) =
          make_float2(st.o[j][2 * r] * inv_l, st.o[j][2 * r + 1] * inv_l);
    }
    if (t == 0) {
      problem.partial_lse[partial_row * num_heads + head] =
          st.l[r] > 0.0f ? st.m[r] * kLn2 + logf(st.l[r]) : -INFINITY;
    }
  }
}

}  // namespace chunkattn::cuda
