// CPU two-phase-partition decode attention (AVX2 + FMA + F16C when the CPU has them, portable
// C++ otherwise; OpenMP over work items x kv heads; fp32 accumulation). Framework-free.
// All pointers are host pointers borrowed from the caller.
#pragma once

#include "../decode_plan.h"

namespace chunkattn::cpu {

// q_dtype: dtype of problem.q / problem.out (kFloat32, kFloat16, kBFloat16).
// kv_dtype: the pool's storage dtype (kFloat32, kFloat16, kBFloat16, or kInt8 with scales).
// Returns a Status code.
int decode_attention(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                     const DecodeProblem& problem, int num_threads);

// True when this build and this CPU run the AVX2 path.
bool has_avx2();

}  // namespace chunkattn::cpu
