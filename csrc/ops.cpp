#include "ops.h"

#include "kernels/cpu/decode_attention.h"
#include "kernels/cpu/small_batch_linear.h"
#ifdef CHUNKATTN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda/decode_attention.cuh"
#endif

namespace chunkattn {

namespace {

DType to_dtype(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return DType::kFloat32;
    case torch::kFloat16: return DType::kFloat16;
    case torch::kBFloat16: return DType::kBFloat16;
    case torch::kInt8: return DType::kInt8;
    default: TORCH_CHECK(false, "chunkattn: unsupported dtype ", t.scalar_type());
  }
}

const char* status_message(int status) {
  switch (status) {
    case kUnsupportedDType: return "unsupported dtype combination";
    case kUnsupportedHeadDim: return "unsupported head_dim";
    case kUnsupportedChunkSize: return "unsupported chunk_size";
    case kBadShape: return "bad shape";
    case kLaunchFailed: return "kernel launch failed";
    default: return "unknown error";
  }
}

}  // namespace

void decode_attention(const torch::Tensor& q, const torch::Tensor& k_pool, const torch::Tensor& v_pool,
                      const std::optional<torch::Tensor>& k_scale, const std::optional<torch::Tensor>& v_scale,
                      const KernelPlan& plan, const std::optional<torch::Tensor>& plan_packed, torch::Tensor& out,
                      torch::Tensor& partial_o, torch::Tensor& partial_lse, double scale, int64_t num_threads) {
  TORCH_CHECK(q.dim() == 3, "decode: q must be [num_seqs, num_heads, head_dim], got ", q.sizes());
  TORCH_CHECK(k_pool.dim() == 4 && v_pool.sizes() == k_pool.sizes(),
              "decode: k_pool and v_pool must both be [num_chunks, num_kv_heads, chunk_size, head_dim]");
  const int64_t num_seqs = q.size(0), num_heads = q.size(1), head_dim = q.size(2);
  const int64_t num_kv_heads = k_pool.size(1), chunk_size = k_pool.size(2);
  TORCH_CHECK(num_seqs == plan.num_seqs, "decode: q has ", num_seqs, " rows but the tree holds ", plan.num_seqs,
              " sequences");
  TORCH_CHECK(k_pool.size(3) == head_dim, "decode: head_dim of q (", head_dim, ") and pool (", k_pool.size(3),
              ") differ");
  TORCH_CHECK(num_heads % num_kv_heads == 0, "decode: num_heads ", num_heads, " is not a multiple of num_kv_heads ",
              num_kv_heads);
  TORCH_CHECK(q.is_contiguous() && k_pool.is_contiguous() && v_pool.is_contiguous() && out.is_contiguous(),
              "decode: tensors must be contiguous");
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type(), "decode: out must match q");
  TORCH_CHECK(k_pool.device() == q.device() && v_pool.device() == q.device() && out.device() == q.device(),
              "decode: q, pool and out must be on one device");
  TORCH_CHECK(partial_o.scalar_type() == torch::kFloat32 && partial_lse.scalar_type() == torch::kFloat32 &&
                  partial_o.is_contiguous() && partial_lse.is_contiguous(),
              "decode: partial buffers must be contiguous float32");
  TORCH_CHECK(partial_o.numel() >= int64_t(plan.num_partial_rows) * num_heads * head_dim &&
                  partial_lse.numel() >= int64_t(plan.num_partial_rows) * num_heads,
              "decode: partial buffers too small for ", plan.num_partial_rows, " rows");
  const bool int8 = k_pool.scalar_type() == torch::kInt8;
  TORCH_CHECK(int8 == (k_scale.has_value() && v_scale.has_value()), "decode: int8 pools need k_scale and v_scale");
  if (int8) {
    TORCH_CHECK(k_scale->scalar_type() == torch::kFloat32 && k_scale->is_contiguous() &&
                    k_scale->numel() == k_pool.size(0) * num_kv_heads && v_scale->sizes() == k_scale->sizes() &&
                    v_scale->is_contiguous() && v_scale->scalar_type() == torch::kFloat32,
                "decode: scales must be contiguous float32 [num_chunks, num_kv_heads]");
  }

  KvPoolView pool;
  pool.k = k_pool.data_ptr();
  pool.v = v_pool.data_ptr();
  pool.k_scale = int8 ? k_scale->data_ptr<float>() : nullptr;
  pool.v_scale = int8 ? v_scale->data_ptr<float>() : nullptr;
  pool.chunk_size = static_cast<int>(chunk_size);
  pool.num_kv_heads = static_cast<int>(num_kv_heads);
  pool.head_dim = static_cast<int>(head_dim);
  DecodeProblem problem;
  problem.num_heads = static_cast<int>(num_heads);
  problem.scale = static_cast<float>(scale);
  problem.q = q.data_ptr();
  problem.out = out.data_ptr();
  problem.partial_o = partial_o.data_ptr<float>();
  problem.partial_lse = partial_lse.data_ptr<float>();
  if (num_seqs == 0) return;

  int status = kOk;
  if (q.is_cpu()) {
    const DecodePlanView view = plan.view(plan.packed.data());
    status = cpu::decode_attention(to_dtype(q), to_dtype(k_pool), pool, view, problem,
                                   static_cast<int>(std::max<int64_t>(1, num_threads)));
  } else {
#ifdef CHUNKATTN_WITH_CUDA
    TORCH_CHECK(q.is_cuda(), "decode: unsupported device ", q.device());
    TORCH_CHECK(plan_packed.has_value() && plan_packed->device() == q.device() &&
                    plan_packed->scalar_type() == torch::kInt32 &&
                    plan_packed->numel() == static_cast<int64_t>(plan.packed.size()),
                "decode: the plan must be uploaded to the device (int32, ", plan.packed.size(), " values)");
    const c10::cuda::CUDAGuard guard(q.device());
    const DecodePlanView view = plan.view(plan_packed->data_ptr<int32_t>());
    status = cuda::decode_attention(to_dtype(q), to_dtype(k_pool), pool, view, problem,
                                    at::cuda::getCurrentCUDAStream().stream());
#else
    TORCH_CHECK(false, "decode: this build of chunkattn has no CUDA kernels (rebuild with a CUDA torch and nvcc)");
#endif
  }
  TORCH_CHECK(status == kOk, "decode: ", status_message(status), " (dtype ", q.scalar_type(), "/",
              k_pool.scalar_type(), ", head_dim ", head_dim, ", chunk_size ", chunk_size, ", device ", q.device(), ")");
}

void small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight, torch::Tensor& out, int64_t num_threads) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && out.dim() == 2, "small_batch_linear: 2-D tensors expected");
  const int64_t rows = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(rows >= 1 && rows <= cpu::kMaxLinearRows, "small_batch_linear: 1 to ", cpu::kMaxLinearRows,
              " rows, got ", rows);
  TORCH_CHECK(weight.size(1) == k && k % 8 == 0, "small_batch_linear: weight [n, ", k,
              "] with k a multiple of 8 expected, got ", weight.sizes());
  TORCH_CHECK(out.size(0) == rows && out.size(1) == n, "small_batch_linear: out must be [", rows, ", ", n, "]");
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&x, &weight, &out}) {
    TORCH_CHECK(t->is_cpu() && t->scalar_type() == torch::kFloat32 && t->is_contiguous(),
                "small_batch_linear: contiguous float32 CPU tensors expected");
  }
  const int status = cpu::small_batch_linear(x.data_ptr<float>(), static_cast<int>(rows), weight.data_ptr<float>(), n,
                                             k, out.data_ptr<float>(), static_cast<int>(std::max<int64_t>(1, num_threads)));
  TORCH_CHECK(status == kOk, "small_batch_linear: ", status_message(status));
}

bool built_with_cuda() {
#ifdef CHUNKATTN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace chunkattn
