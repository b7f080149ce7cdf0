// Runtime dispatch between the AVX2 and the portable CPU kernels.
#include "decode_attention.h"

namespace chunkattn::cpu {

int decode_attention_avx2(DType, DType, const KvPoolView&, const DecodePlanView&, const DecodeProblem&, int);
int decode_attention_generic(DType, DType, const KvPoolView&, const DecodePlanView&, const DecodeProblem&, int);

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

}  // namespace chunkattn::cpu
