// Host-side decode plan built from the prefix tree (plan once, run for every layer). Owns its
// arrays; view(base) lends them to a kernel as a DecodePlanView, where base is either packed.data()
// (CPU) or a device copy of packed (CUDA).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/decode_plan.h"

namespace chunkattn {

// kAuto: chunks shared by >= 2 sequences run chunk-first, private chunks sequence-first.
// kChunkFirst: every chunk runs chunk-first (private chains as one-sequence items).
// kSequenceFirst: every sequence reads all its chunks itself (PagedAttention-style baseline).
enum class PartitionMode : int { kAuto = 0, kChunkFirst = 1, kSequenceFirst = 2 };

struct KernelPlan {
  enum Array : int {
    kItemSeqBegin, kItemSeqEnd, kItemChunkOffset, kItemChunkIds, kItemNumTokens, kItemPartialOffset,
    kSeqChunkOffset, kSeqChunkIds, kSeqNumTokens, kSeqPartialOffset, kSeqPartialRows, kNumArrays
  };

  int32_t num_seqs = 0;
  int32_t num_items = 0;
  int32_t num_partial_rows = 0;
  int32_t max_item_chunks = 0;
  int32_t max_item_seqs = 0;
  int32_t max_seq_chunks = 0;
  uint64_t version = 0;  // changes whenever any value in packed changes
  std::vector<int32_t> packed;                 // every array back to back
  int64_t offsets[kNumArrays + 1] = {};        // array a is packed[offsets[a] .. offsets[a+1])
  // Tail-length patches applied when tokens are appended without a structural change:
  // packed[patch_index[i]] = patch_base[i] + (tokens in chunk patch_chunk[i]).
  std::vector<int64_t> patch_index;
  std::vector<int32_t> patch_base;
  std::vector<int32_t> patch_chunk;

  DecodePlanView view(const int32_t* base) const {
    DecodePlanView v;
    v.num_seqs = num_seqs;
    v.num_items = num_items;
    v.num_partial_rows = num_partial_rows;
    v.max_item_chunks = max_item_chunks;
    v.max_item_seqs = max_item_seqs;
    v.max_seq_chunks = max_seq_chunks;
    v.item_seq_begin = base + offsets[kItemSeqBegin];
    v.item_seq_end = base + offsets[kItemSeqEnd];
    v.item_chunk_offset = base + offsets[kItemChunkOffset];
    v.item_chunk_ids = base + offsets[kItemChunkIds];
    v.item_num_tokens = base + offsets[kItemNumTokens];
    v.item_partial_offset = base + offsets[kItemPartialOffset];
    v.seq_chunk_offset = base + offsets[kSeqChunkOffset];
    v.seq_chunk_ids = base + offsets[kSeqChunkIds];
    v.seq_num_tokens = base + offsets[kSeqNumTokens];
    v.seq_partial_offset = base + offsets[kSeqPartialOffset];
    v.seq_partial_rows = base + offsets[kSeqPartialRows];
    return v;
  }
};

}  // namespace chunkattn
