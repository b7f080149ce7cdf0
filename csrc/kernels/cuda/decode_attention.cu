// Entry point of the CUDA two-phase-partition decode attention: checks the problem, dispatches on
// dtype and head_dim, and queues the chunk-first kernel then the sequence-first + merge kernel on the
// caller's stream (stream order makes phase 2 see phase 1's partial rows). No allocation, no sync.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "chunk_first.cuh"
#include "decode_attention.cuh"
#include "sequence_first.cuh"

namespace chunkattn::cuda {

namespace {

constexpr int kMaxGridYZ = 65535;
constexpr size_t kDefaultSmemBytes = 48 * 1024;

template <typename Kernel>
bool allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSmemBytes) return true;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) ==
         cudaSuccess;
}

template <typename T, typename KV, int D>
int launch(const KvPoolView& pool, const DecodePlanView& plan, const DecodeProblem& problem,
           cudaStream_t stream) {
  const int group = problem.num_heads / pool.num_kv_heads;
  if (pool.num_kv_heads > kMaxGridYZ) return kBadShape;

  if (plan.num_items > 0 && plan.max_item_seqs > 0) {
    using L = ChunkFirstLayout<T, D>;
    const int64_t row_blocks = (static_cast<int64_t>(plan.max_item_seqs) * group + L::kRows - 1) / L::kRows;
    if (row_blocks > kMaxGridYZ) return kBadShape;
    if (!allow_smem(chunk_first_kernel<T, KV, D>, L::kSmemBytes)) return kLaunchFailed;
    const dim3 grid(plan.num_items, pool.num_kv_heads, static_cast<unsigned>(row_blocks));
    chunk_first_kernel<T, KV, D><<<grid, L::kThreads, L::kSmemBytes, stream>>>(pool, plan, problem, group);
    if (cudaGetLastError() != cudaSuccess) return kLaunchFailed;
  }

  using L = SequenceFirstLayout<T, D>;
  if (!allow_smem(sequence_first_kernel<T, KV, D>, L::kSmemBytes)) return kLaunchFailed;
  const dim3 grid(plan.num_seqs, pool.num_kv_heads, (group + 15) / 16);
  sequence_first_kernel<T, KV, D><<<grid, L::kThreads, L::kSmemBytes, stream>>>(pool, plan, problem, group);
  return cudaGetLastError() == cudaSuccess ? kOk : kLaunchFailed;
}

template <typename T, typename KV>
int dispatch_head_dim(const KvPoolView& pool, const DecodePlanView& plan, const DecodeProblem& problem,
                      cudaStream_t stream) {
  switch (pool.head_dim) {
    case 64:
      return launch<T, KV, 64>(pool, plan, problem, stream);
    case 128:
      return launch<T, KV, 128>(pool, plan, problem, stream);
    default:
      return kUnsupportedHeadDim;
  }
}

template <typename T>
int dispatch_kv(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                const DecodeProblem& problem, cudaStream_t stream) {
  if (kv_dtype == q_dtype) return dispatch_head_dim<T, T>(pool, plan, problem, stream);
  if (kv_dtype == DType::kInt8) return dispatch_head_dim<T, int8_t>(pool, plan, problem, stream);
  return kUnsupportedDType;
}

}  // namespace

int decode_attention(DType q_dtype, DType kv_dtype, const KvPoolView& pool, const DecodePlanView& plan,
                     const DecodeProblem& problem, cudaStream_t stream) {
  if (pool.head_dim != 64 && pool.head_dim != 128) return kUnsupportedHeadDim;
  if (pool.chunk_size <= 0) return kUnsupportedChunkSize;
  if (pool.num_kv_heads <= 0 || problem.num_heads <= 0 || problem.num_heads % pool.num_kv_heads != 0) {
    return kBadShape;
  }
  if (kv_dtype == DType::kInt8 && (pool.k_scale == nullptr || pool.v_scale == nullptr)) return kBadShape;
  if (plan.num_seqs < 0 || plan.num_items < 0) return kBadShape;
  if (plan.num_seqs == 0) return kOk;  // nothing to write (and a grid of zero blocks is invalid)
  switch (q_dtype) {
    case DType::kFloat16:
      return dispatch_kv<__half>(q_dtype, kv_dtype, pool, plan, problem, stream);
    case DType::kBFloat16:
      return dispatch_kv<__nv_bfloat16>(q_dtype, kv_dtype, pool, plan, problem, stream);
    case DType::kFloat32:
      return dispatch_kv<float>(q_dtype, kv_dtype, pool, plan, problem, stream);
    default:
      return kUnsupportedDType;
  }
}

}  // namespace chunkattn::cuda
