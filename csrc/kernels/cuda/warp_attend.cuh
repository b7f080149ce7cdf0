// One warp, 16 query rows, one shared-memory tile of TT tokens: scores, online softmax and P·V.
//
// The state lives in the m16n8 accumulator layout of mma.sync: lane = 4 * g + t holds rows g and
// g + 8, and for each 8-column block j the columns 8j + 2t and 8j + 2t + 1:
//   x[j] = {X[g][8j+2t], X[g][8j+2t+1], X[g+8][8j+2t], X[g+8][8j+2t+1]}
// for the scores S (columns = tokens) and the output O (columns = dims). A row's four values of m and
// l sit in the four lanes 4g..4g+3 and are kept equal there (shuffle reductions over xor 1, 2).
// fp16/bf16 on sm_80+ run both products on tensor cores (fp32 accumulate); fp32, or older GPUs,
// compute the same fragments with CUDA-core FMAs from shared memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "dtype.cuh"
#include "ptx.cuh"

namespace chunkattn::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T>
__host__ __device__ constexpr bool use_mma() {
  return kHasMma && !std::is_same_v<T, float>;
}

// Online-softmax state of one 16-row tile: unnormalised O, running max m (log2 domain: scores are
// multiplied by scale * log2 e) and running sum l of exp2(score - m).
template <int D>
struct TileState {
  float o[D / 8][4];
  float m[2];  // rows g, g + 8
  float l[2];

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }
};

__device__ __forceinline__ uint32_t load_u32(const void* p) { return *static_cast<const uint32_t*>(p); }

// s = Q K^T (unscaled): q_s [16][ld], k_s [TT][ld] in shared memory, s in the fragment layout.
template <typename T, int D, int TT>
__device__ __forceinline__ void tile_scores(const T* q_s, const T* k_s, int ld, float (&s)[TT / 8][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < TT / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
  if constexpr (use_mma<T>()) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int d = 16 * kk + 2 * t;
      const uint32_t a[4] = {load_u32(q_s + g * ld + d), load_u32(q_s + (g + 8) * ld + d),
                             load_u32(q_s + g * ld + d + 8), load_u32(q_s + (g + 8) * ld + d + 8)};
#pragma unroll
      for (int j = 0; j < TT / 8; ++j) {
        const T* k_row = k_s + (8 * j + g) * ld + d;  // B[k = dim][n = token] = K[token][dim]
        mma_m16n8k16<T>(s[j], a, load_u32(k_row), load_u32(k_row + 8));
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < TT / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const T* q_row = q_s + (g + 8 * (e >> 1)) * ld;
        const T* k_row = k_s + (8 * j + 2 * t + (e & 1)) * ld;
        float acc = 0.0f;
#pragma unroll 4
        for (int d = 0; d < D; ++d) acc += to_float(q_row[d]) * to_float(k_row[d]);
        s[j][e] = acc;
      }
    }
  }
}

// o += P V: p in the fragment layout (TT token columns), v_s [TT][ld]. p_s [16][TT + 4] fp32 is
// scratch of this warp for the CUDA-core path.
template <typename T, int D, int TT>
__device__ __forceinline__ void tile_pv(const float (&p)[TT / 8][4], const T* v_s, int ld,
                                        float (&o)[D / 8][4], float* p_s) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if constexpr (use_mma<T>()) {
    const uint16_t* v16 = reinterpret_cast<const uint16_t*>(v_s);
#pragma unroll
    for (int kk = 0; kk < TT / 16; ++kk) {
      // A = P[16 rows][tokens 16kk .. 16kk+15]: score blocks 2kk and 2kk+1 are its two column halves.
      const uint32_t a[4] = {pack2<T>(p[2 * kk][0], p[2 * kk][1]), pack2<T>(p[2 * kk][2], p[2 * kk][3]),
                             pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                             pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
      const int k0 = 16 * kk + 2 * t;  // B[k = token][n = dim] = V[token][dim]
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        const int col = 8 * j + g;
        const uint32_t b0 = v16[k0 * ld + col] | (static_cast<uint32_t>(v16[(k0 + 1) * ld + col]) << 16);
        const uint32_t b1 =
            v16[(k0 + 8) * ld + col] | (static_cast<uint32_t>(v16[(k0 + 9) * ld + col]) << 16);
        mma_m16n8k16<T>(o[j], a, b0, b1);
      }
    }
  } else {
    constexpr int kLdp = TT + 4;
#pragma unroll
    for (int j = 0; j < TT / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) p_s[(g + 8 * (e >> 1)) * kLdp + 8 * j + 2 * t + (e & 1)] = p[j][e];
    }
    __syncwarp();
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float* p_row = p_s + (g + 8 * (e >> 1)) * kLdp;
        const T* v_col = v_s + 8 * j + 2 * t + (e & 1);
        float acc = 0.0f;
#pragma unroll 4
        for (int i = 0; i < TT; ++i) acc += p_row[i] * to_float(v_col[i * ld]);
        o[j][e] += acc;
      }
    }
    __syncwarp();  // p_s is rewritten by the next tile
  }
}

__device__ __forceinline__ float row_max4(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float row_sum4(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Folds tokens 0..n-1 (n >= 1) of the tile into the state; tokens n..TT-1 are masked.
// scale_log2 = softmax scale * log2 e. All 32 lanes of the warp must call it.
template <typename T, int D, int TT>
__device__ __forceinline__ void attend_tile(TileState<D>& st, const T* q_s, const T* k_s, const T* v_s,
                                            int ld, int n, float scale_log2, float* p_s) {
  const int t = threadIdx.x & 3;
  float s[TT / 8][4];
  tile_scores<T, D, TT>(q_s, k_s, ld, s);

  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < TT / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int token = 8 * j + 2 * t + (e & 1);
      s[j][e] = token < n ? s[j][e] * scale_log2 : -INFINITY;
      tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[j][e]);
    }
  }
  float alpha[2], m_ref[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = fmaxf(st.m[r], row_max4(tile_max[r]));
    alpha[r] = st.m[r] == -INFINITY ? 0.0f : exp2f(st.m[r] - m_new);
    m_ref[r] = m_new == -INFINITY ? 0.0f : m_new;  // keeps exp2(-inf - m) at 0, never NaN
    st.m[r] = m_new;
  }
  float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < TT / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = exp2f(s[j][e] - m_ref[e >> 1]);
      tile_sum[e >> 1] += s[j][e];
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) st.l[r] = st.l[r] * alpha[r] + row_sum4(tile_sum[r]);
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[j][e] *= alpha[e >> 1];
  }
  tile_pv<T, D, TT>(s, v_s, ld, st.o, p_s);
}

}  // namespace chunkattn::cuda
