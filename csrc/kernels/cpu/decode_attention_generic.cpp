// Portable instantiation (whatever the compiler's default target is).
#include <type_traits>

#define CHUNKATTN_CPU_ISA generic
#include "decode_attention_impl.h"
#include "small_batch_linear_impl.h"

namespace chunkattn::cpu {

int decode_attention_generic(DType q_dtype, DType kv_dtype, const KvPoolView& pool,
                             const DecodePlanView& plan, const DecodeProblem& problem, int num_threads) {
  return generic::decode_attention(q_dtype, kv_dtype, pool, plan, problem, num_threads);
}

int small_batch_linear_generic(const float* x, int rows, const float* w, int64_t n, int64_t k, float* y,
                             int num_threads) {
  return generic::small_batch_linear(x, rows, w, n, k, y, num_threads);
}

}  // namespace chunkattn::cpu
