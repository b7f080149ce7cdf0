// Small-batch linear layer, instantiated per instruction set (namespace CHUNKATTN_CPU_ISA). Each
// thread streams a contiguous range of W's rows; every row is read once and dotted with all `rows`
// inputs, which stay in L1. Two W rows at a time when there are few inputs, so that at least four
// independent FMA chains hide the FMA latency.
#pragma once

#include <omp.h>

#include <algorithm>

#include "../decode_plan.h"
#include "small_batch_linear.h"
#include "vec8.h"

namespace chunkattn::cpu::CHUNKATTN_CPU_ISA {

template <int R, int P>  // R input rows, P weight rows at a time
void dot_rows(const float* x, const float* w, int64_t k, float* y, int64_t n) {
  v8f acc[P][R];
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < R; ++r) acc[p][r] = splat(0.0f);
  for (int64_t i = 0; i < k; i += 8) {
    for (int p = 0; p < P; ++p) {
      const v8f wv = load8(w + p * k + i);
      for (int r = 0; r < R; ++r) acc[p][r] += load8(x + r * k + i) * wv;
    }
  }
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < R; ++r) y[r * n + p] = hsum(acc[p][r]);
}

template <int R>
void linear_range(const float* x, const float* w, int64_t begin, int64_t end, int64_t n, int64_t k, float* y) {
  constexpr int P = R <= 2 ? 2 : 1;
  int64_t j = begin;
  for (; j + P <= end; j += P) dot_rows<R, P>(x, w + j * k, k, y + j, n);
  for (; j < end; ++j) dot_rows<R, 1>(x, w + j * k, k, y + j, n);
}

inline int small_batch_linear(const float* x, int rows, const float* w, int64_t n, int64_t k, float* y,
                              int num_threads) {
  if (rows < 1 || rows > kMaxLinearRows || k % 8 != 0 || n < 1) return kBadShape;
#pragma omp parallel num_threads(num_threads)
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (n + threads - 1) / threads;
    const int64_t begin = std::min(n, t * per), end = std::min(n, begin + per);
    switch (rows) {
      case 1: linear_range<1>(x, w, begin, end, n, k, y); break;
      case 2: linear_range<2>(x, w, begin, end, n, k, y); break;
      case 3: linear_range<3>(x, w, begin, end, n, k, y); break;
      case 4: linear_range<4>(x, w, begin, end, n, k, y); break;
      case 5: linear_range<5>(x, w, begin, end, n, k, y); break;
      case 6: linear_range<6>(x, w, begin, end, n, k, y); break;
      case 7: linear_range<7>(x, w, begin, end, n, k, y); break;
      default: linear_range<8>(x, w, begin, end, n, k, y); break;
    }
  }
  return kOk;
}

}  // namespace chunkattn::cpu::CHUNKATTN_CPU_ISA
