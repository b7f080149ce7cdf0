// y = x W^T for a few rows of x (decode steps), fp32, streaming W once from memory. Framework-free;
// all pointers are host pointers borrowed from the caller.
#pragma once

#include <cstdint>

namespace chunkattn::cpu {

constexpr int kMaxLinearRows = 8;

// x: [rows, k] row-major, w: [n, k] row-major, y: [rows, n]. rows in [1, kMaxLinearRows], k a
// multiple of 8. Returns a Status code (decode_plan.h).
int small_batch_linear(const float* x, int rows, const float* w, int64_t n, int64_t k, float* y, int num_threads);

}  // namespace chunkattn::cpu
