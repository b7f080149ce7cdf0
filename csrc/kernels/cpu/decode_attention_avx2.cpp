// AVX2 + FMA + F16C instantiation. Every standard header is included before the target pragma so
// that no inline library function is compiled with instructions the portable path must not use.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#pragma GCC target("avx2,fma,f16c")
#define CHUNKATTN_CPU_ISA avx2
#include "decode_attention_impl.h"
#include "small_batch_linear_impl.h"

namespace chunkattn::cpu {

int decode_attention_avx2(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                          const DecodeProblem& problem, int num_threads) {
  return avx2::decode_attention(q_dtype, kv_dtype, pool, plan, problem, num_threads);
}

int small_batch_linear_avx2(const float* x, int rows, const float* w, int64_t n, int64_t k, float* y,
                             int num_threads) {
  return avx2::small_batch_linear(x, rows, w, n, k, y, num_threads);
}

}  // namespace chunkattn::cpu
