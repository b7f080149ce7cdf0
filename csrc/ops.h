// Torch-facing operations: shape, dtype and device checks, then dispatch to the framework-free
// kernels (CPU always; CUDA when built with CHUNKATTN_WITH_CUDA).
#pragma once

#include <torch/extension.h>

#include "kernel_plan.h"

namespace chunkattn {

// q, out: [num_seqs, H, D] in decode order; k_pool, v_pool: one layer, [num_chunks, Hkv, C, D];
// k_scale, v_scale: [num_chunks, Hkv] fp32 for int8 pools; plan_packed: the plan's packed arrays on
// q's device (CUDA; may be undefined on the CPU, where plan.packed is read directly);
// partial_o: [>= plan.num_partial_rows, H, D] fp32; partial_lse: [>= plan.num_partial_rows, H] fp32.
void decode_attention(const torch::Tensor& q, const torch::Tensor& k_pool, const torch::Tensor& v_pool,
                      const std::optional<torch::Tensor>& k_scale, const std::optional<torch::Tensor>& v_scale,
                      const KernelPlan& plan, const std::optional<torch::Tensor>& plan_packed, torch::Tensor& out,
                      torch::Tensor& partial_o, torch::Tensor& partial_lse, double scale, int64_t num_threads);

// out = x weight^T for 1..8 rows of x, fp32 on the CPU (the decode-step linear layers): x [rows, k],
// weight [n, k], out [rows, n]; k a multiple of 8.
void small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight, torch::Tensor& out, int64_t num_threads);

bool built_with_cuda();

}  // namespace chunkattn
