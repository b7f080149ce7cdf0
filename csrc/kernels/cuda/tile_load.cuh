// Global -> shared loads of the decode kernels' tiles. A tile row is D elements of the compute type T
// padded by 16 bytes (row stride tile_ld<T, D>()), so the 8 row groups of a warp's fragment loads
// land in different banks; every row starts 16-byte aligned.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../decode_plan.h"
#include "dtype.cuh"
#include "ptx.cuh"

namespace chunkattn::cuda {

template <typename T, int D>
__host__ __device__ constexpr int tile_ld() {
  return D + 16 / static_cast<int>(sizeof(T));
}

// q_s [16][tile_ld] <- query rows [row_begin, row_begin + 16) of a row list, zeros from num_rows on.
// Row R of the list is query head kv_head * group + R % group of sequence seq_begin + R / group:
// every sequence of a range times the query heads of one kv head. q: [num_seqs, num_heads, D].
template <typename T, int D, int NT>
__device__ __forceinline__ void load_q_tile(T* q_s, const T* q, int num_heads, int group, int kv_head,
                                            int seq_begin, int row_begin, int num_rows, int tid) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kVecsPerRow = D / kVec;
  constexpr int kLd = tile_ld<T, D>();
  for (int e = tid; e < 16 * kVecsPerRow; e += NT) {
    const int r = e / kVecsPerRow, c = (e % kVecsPerRow) * kVec;
    const int row = row_begin + r;
    uint4 x = make_uint4(0u, 0u, 0u, 0u);
    if (row < num_rows) {
      const int64_t seq = seq_begin + row / group;
      const int64_t head = static_cast<int64_t>(kv_head) * group + row % group;
      x = *reinterpret_cast<const uint4*>(q + (seq * num_heads + head) * D + c);
    }
    *reinterpret_cast<uint4*>(q_s + r * kLd + c) = x;
  }
}

// dst[0..16) <- 16 INT8 values times scale (zeros when !valid).
template <typename T>
__device__ __forceinline__ void dequantize_16(T* dst, const int8_t* src, float scale, bool valid) {
  union {
    uint4 v;
    int8_t b[16];
  } x;
  x.v = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
  for (int k = 0; k < 16; ++k) dst[k] = from_float<T>(static_cast<float>(x.b[k]) * scale);
}

// k_s, v_s [TT][tile_ld] <- tokens [t0, t0 + n) of kv head kv_head along a chunk list (token i of
// the list is token i % chunk_size of chunk chunk_ids[i / chunk_size]); rows n..TT-1 are zeroed so
// that masked tokens contribute exactly 0 to P·V. NT threads with ids tid take part.
// KV == T: cp.async, the caller runs cp_async_wait_all() and a barrier before reading.
// KV == int8_t: dequantised with the (chunk, kv head) scale through registers.
template <typename T, typename KV, int D, int TT, int NT>
__device__ __forceinline__ void load_kv_tile(T* k_s, T* v_s, const KvPoolView& pool, const int32_t* chunk_ids,
                                             int kv_head, int t0, int n, int tid) {
  static_assert(std::is_same_v<KV, T> || std::is_same_v<KV, int8_t>, "pool dtype is q dtype or int8");
  constexpr int kLd = tile_ld<T, D>();
  constexpr int kVec = 16 / static_cast<int>(sizeof(KV));
  constexpr int kVecsPerRow = D / kVec;
  const KV* k_pool = static_cast<const KV*>(pool.k);
  const KV* v_pool = static_cast<const KV*>(pool.v);
  for (int e = tid; e < TT * kVecsPerRow; e += NT) {
    const int i = e / kVecsPerRow, c = (e % kVecsPerRow) * kVec;
    const bool valid = i < n;
    int64_t chunk_head = 0, offset = 0;  // offset: element index of (token, dim c) in the pool
    if (valid) {
      const int token = t0 + i;
      chunk_head = static_cast<int64_t>(chunk_ids[token / pool.chunk_size]) * pool.num_kv_heads + kv_head;
      offset = (chunk_head * pool.chunk_size + token % pool.chunk_size) * D + c;
    }
    if constexpr (std::is_same_v<KV, T>) {
      cp_async_16(k_s + i * kLd + c, k_pool + offset, valid);
      cp_async_16(v_s + i * kLd + c, v_pool + offset, valid);
    } else {
      dequantize_16(k_s + i * kLd + c, k_pool + offset, valid ? pool.k_scale[chunk_head] : 0.0f, valid);
      dequantize_16(v_s + i * kLd + c, v_pool + offset, valid ? pool.v_scale[chunk_head] : 0.0f, valid);
    }
  }
}

}  // namespace chunkattn::cuda
