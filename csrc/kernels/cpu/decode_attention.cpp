// Runtime dispatch between the AVX2 and the portable CPU kernels.
#include "decode_attention.h"
#include "small_batch_linear.h"

namespace chunkattn::cpu {

int decode_attention_avx2(DType, DType, const KvPoolView&, const DecodePlanView&, const DecodeProblem&, int);
int decode_attention_generic(DType, DType, const KvPoolView&, const DecodePlanView&, const DecodeProblem&, int);

int small_batch_linear_avx2(const float*, int, const float*, int64_t, int64_t, float*, int);
int small_batch_linear_generic(const float*, int, const float*, int64_t, int64_t, float*, int);

bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}

int decode_attention(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                     const DecodeProblem& problem, int num_threads) {
  if (has_avx2()) return decode_attention_avx2(q_dtype, kv_dtype, pool, plan, problem, num_threads);
  return decode_attention_generic(q_dtype, kv_dtype, pool, plan, problem, num_threads);
}

int small_batch_linear(const float* x, int rows, const float* w, int64_t n, int64_t k, float* y, int num_threads) {
  if (has_avx2()) return small_batch_linear_avx2(x, rows, w, n, k, y, num_threads);
  return small_batch_linear_generic(x, rows, w, n, k, y, num_threads);
}

}  // namespace chunkattn::cpu
