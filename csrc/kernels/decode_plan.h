// Kernel-facing view of a decode plan and of the KV pool. Framework-free: raw pointers only.
//
// Ownership: every pointer here is borrowed. The plan arrays belong to the caller's DecodePlan
// (host memory for the CPU kernels, device memory for the CUDA kernels); the pool, query, output
// and scratch buffers belong to the caller's tensors. Kernels never free or keep any of them.
#pragma once

#include <cstdint>

namespace chunkattn {

// Layout of one layer of the KV pool: [num_chunks, num_kv_heads, chunk_size, head_dim] for K and
// for V, contiguous, so each (chunk, kv head) is one contiguous chunk_size x head_dim block. Token t
// of chunk c, kv head g starts at ((c * num_kv_heads + g) * chunk_size + t) * head_dim.
// INT8 pools carry one float scale per (chunk, kv head): scale[c * num_kv_heads + g].
struct KvPoolView {
  const void* k = nullptr;
  const void* v = nullptr;
  const float* k_scale = nullptr;  // INT8 pools only, else nullptr
  const float* v_scale = nullptr;  // INT8 pools only, else nullptr
  int chunk_size = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Two-phase-partition plan over the sequences in decode order (s = 0 .. num_seqs-1).
//
// Chunk-first phase: item i covers sequences [item_seq_begin[i], item_seq_end[i]) and the chunks
// item_chunk_ids[item_chunk_offset[i] .. item_chunk_offset[i+1]) holding item_num_tokens[i] tokens
// (every chunk full except possibly the last). Its result for sequence s goes to partial row
// item_partial_offset[i] + (s - item_seq_begin[i]).
//
// Sequence-first phase: sequence s attends to seq_chunk_ids[seq_chunk_offset[s] ..
// seq_chunk_offset[s+1]) holding seq_num_tokens[s] tokens, then merges with its partial rows
// seq_partial_rows[seq_partial_offset[s] .. seq_partial_offset[s+1]) by the log-sum-exp rule.
struct DecodePlanView {
  int num_seqs = 0;
  int num_items = 0;
  int num_partial_rows = 0;
  int max_item_chunks = 0;  // longest item, in chunks
  int max_item_seqs = 0;    // widest item, in sequences
  int max_seq_chunks = 0;   // longest sequence-first list, in chunks
  const int32_t* item_seq_begin = nullptr;     // [num_items]
  const int32_t* item_seq_end = nullptr;       // [num_items]
  const int32_t* item_chunk_offset = nullptr;  // [num_items + 1]
  const int32_t* item_chunk_ids = nullptr;     // [item_chunk_offset[num_items]]
  const int32_t* item_num_tokens = nullptr;    // [num_items]
  const int32_t* item_partial_offset = nullptr;  // [num_items]
  const int32_t* seq_chunk_offset = nullptr;     // [num_seqs + 1]
  const int32_t* seq_chunk_ids = nullptr;        // [seq_chunk_offset[num_seqs]]
  const int32_t* seq_num_tokens = nullptr;       // [num_seqs]
  const int32_t* seq_partial_offset = nullptr;   // [num_seqs + 1]
  const int32_t* seq_partial_rows = nullptr;     // [seq_partial_offset[num_seqs]]
};

// Decode problem: q and out are [num_seqs, num_heads, head_dim] contiguous, in decode order.
// partial_o is [num_partial_rows, num_heads, head_dim] fp32 (normalised outputs) and partial_lse is
// [num_partial_rows, num_heads] fp32 (natural-log sum of exp of the scaled scores); both scratch.
struct DecodeProblem {
  int num_heads = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
  const void* q = nullptr;
  void* out = nullptr;
  float* partial_o = nullptr;
  float* partial_lse = nullptr;
};

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3 };

// Error codes returned by the kernel entry points (0 = success).
enum Status : int {
  kOk = 0,
  kUnsupportedDType = 1,
  kUnsupportedHeadDim = 2,
  kUnsupportedChunkSize = 3,
  kBadShape = 4,
  kLaunchFailed = 5,
};

}  // namespace chunkattn
