// CUDA two-phase-partition decode attention. Framework-free: raw device pointers and a stream.
// All pointers in pool, plan and problem are device pointers borrowed from the caller.
#pragma once

#include <cuda_runtime_api.h>

#include "../decode_plan.h"

namespace chunkattn::cuda {

// Runs the chunk-first phase, the sequence-first phase and the log-sum-exp merge on `stream`.
// q_dtype is the dtype of problem.q / problem.out (kFloat16 or kBFloat16, kFloat32 where supported);
// kv_dtype is the pool's storage dtype (the same as q_dtype, or kInt8 with per-chunk-head scales).
// Returns a Status code; kOk when every launch was queued.
int decode_attention(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                     const DecodeProblem& problem, cudaStream_t stream);

}  // namespace chunkattn::cuda
