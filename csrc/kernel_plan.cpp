// PrefixTree::build_plan: turns the tree into the two-phase-partition work lists of KernelPlan.
#include <algorithm>

#include "prefix_tree.h"

namespace chunkattn {

namespace {

template <typename T>
void append(std::vector<int32_t>& packed, int64_t* offsets, int array, const std::vector<T>& values) {
  offsets[array] = static_cast<int64_t>(packed.size());
  packed.insert(packed.end(), values.begin(), values.end());
  offsets[array + 1] = static_cast<int64_t>(packed.size());
}

}  // namespace

void PrefixTree::build_plan(PartitionMode mode, int32_t max_item_chunks) {
  const std::vector<int64_t>& order = sequence_order();
  const int32_t num_seqs = static_cast<int32_t>(order.size());
  const int32_t limit = max_item_chunks > 0 ? max_item_chunks : INT32_MAX;
  auto chunk_first = [&](int32_t node) {
    return mode == PartitionMode::kChunkFirst || (mode == PartitionMode::kAuto && nodes_[node].ref_count >= 2);
  };

  // Depth-first order makes each node's sequences contiguous: [first sequence, + ref_count).
  std::vector<int32_t> node_begin(nodes_.size(), -1), node_item(nodes_.size(), -1);
  std::vector<int32_t> item_begin, item_end, item_tokens;
  std::vector<std::vector<int32_t>> item_chunks;
  std::vector<int32_t> seq_chunk_offset{0}, seq_chunk_ids, seq_tokens, seq_partial_offset{0};
  std::vector<int32_t> seq_items;  // items covering each sequence, flattened like seq_partial_offset
  KernelPlan& p = plan_;
  p.patch_index.clear();
  p.patch_base.clear();
  p.patch_chunk.clear();
  std::vector<int32_t> patch_array, patch_entry;

  for (int32_t s = 0; s < num_seqs; ++s) {
    const Sequence& sq = seqs_.at(order[s]);
    int32_t tokens_first = 0;
    for (size_t k = 0; k < sq.path.size(); ++k) {
      const int32_t node = sq.path[k];
      const Node& n = nodes_[node];
      if (node_begin[node] < 0) node_begin[node] = s;
      if (!chunk_first(node)) {
        seq_chunk_ids.push_back(node);
        tokens_first += static_cast<int32_t>(n.tokens.size());
        continue;
      }
      if (node_item[node] < 0) {
        const int32_t parent_item = k > 0 ? node_item[sq.path[k - 1]] : -1;
        const bool extends = parent_item >= 0 && item_begin[parent_item] == node_begin[node] &&
                             item_end[parent_item] == node_begin[node] + n.ref_count &&
                             static_cast<int32_t>(item_chunks[parent_item].size()) < limit;
        if (extends) {
          node_item[node] = parent_item;
        } else {
          node_item[node] = static_cast<int32_t>(item_begin.size());
          item_begin.push_back(node_begin[node]);
          item_end.push_back(node_begin[node] + n.ref_count);
          item_tokens.push_back(0);
          item_chunks.emplace_back();
        }
        item_chunks[node_item[node]].push_back(node);
        item_tokens[node_item[node]] += static_cast<int32_t>(n.tokens.size());
        if (k + 1 == sq.path.size()) {  // a private tail in a chunk-first item grows with appends
          patch_array.push_back(KernelPlan::kItemNumTokens);
          patch_entry.push_back(node_item[node]);
          p.patch_chunk.push_back(node);
        }
      }
      if (seq_items.size() == static_cast<size_t>(seq_partial_offset.back()) || seq_items.back() != node_item[node]) {
        seq_items.push_back(node_item[node]);
      }
    }
    if (!chunk_first(sq.path.back())) {
      patch_array.push_back(KernelPlan::kSeqNumTokens);
      patch_entry.push_back(s);
      p.patch_chunk.push_back(sq.path.back());
    }
    seq_chunk_offset.push_back(static_cast<int32_t>(seq_chunk_ids.size()));
    seq_tokens.push_back(tokens_first);
    seq_partial_offset.push_back(static_cast<int32_t>(seq_items.size()));
  }

  const int32_t num_items = static_cast<int32_t>(item_begin.size());
  std::vector<int32_t> item_chunk_offset{0}, item_chunk_ids, item_partial_offset;
  int32_t num_rows = 0, max_item_chunks_seen = 0, max_item_seqs = 0;
  for (int32_t i = 0; i < num_items; ++i) {
    item_chunk_ids.insert(item_chunk_ids.end(), item_chunks[i].begin(), item_chunks[i].end());
    item_chunk_offset.push_back(static_cast<int32_t>(item_chunk_ids.size()));
    item_partial_offset.push_back(num_rows);
    num_rows += item_end[i] - item_begin[i];
    max_item_chunks_seen = std::max(max_item_chunks_seen, static_cast<int32_t>(item_chunks[i].size()));
    max_item_seqs = std::max(max_item_seqs, item_end[i] - item_begin[i]);
  }
  std::vector<int32_t> seq_partial_rows(seq_items.size());
  int32_t max_seq_chunks = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t j = seq_partial_offset[s]; j < seq_partial_offset[s + 1]; ++j) {
      const int32_t item = seq_items[j];
      seq_partial_rows[j] = item_partial_offset[item] + s - item_begin[item];
    }
    max_seq_chunks = std::max(max_seq_chunks, seq_chunk_offset[s + 1] - seq_chunk_offset[s]);
  }

  p.num_seqs = num_seqs;
  p.num_items = num_items;
  p.num_partial_rows = num_rows;
  p.max_item_chunks = max_item_chunks_seen;
  p.max_item_seqs = max_item_seqs;
  p.max_seq_chunks = max_seq_chunks;
  p.packed.clear();
  append(p.packed, p.offsets, KernelPlan::kItemSeqBegin, item_begin);
  append(p.packed, p.offsets, KernelPlan::kItemSeqEnd, item_end);
  append(p.packed, p.offsets, KernelPlan::kItemChunkOffset, item_chunk_offset);
  append(p.packed, p.offsets, KernelPlan::kItemChunkIds, item_chunk_ids);
  append(p.packed, p.offsets, KernelPlan::kItemNumTokens, item_tokens);
  append(p.packed, p.offsets, KernelPlan::kItemPartialOffset, item_partial_offset);
  append(p.packed, p.offsets, KernelPlan::kSeqChunkOffset, seq_chunk_offset);
  append(p.packed, p.offsets, KernelPlan::kSeqChunkIds, seq_chunk_ids);
  append(p.packed, p.offsets, KernelPlan::kSeqNumTokens, seq_tokens);
  append(p.packed, p.offsets, KernelPlan::kSeqPartialOffset, seq_partial_offset);
  append(p.packed, p.offsets, KernelPlan::kSeqPartialRows, seq_partial_rows);
  for (size_t i = 0; i < patch_array.size(); ++i) {
    const int64_t index = p.offsets[patch_array[i]] + patch_entry[i];
    p.patch_index.push_back(index);
    p.patch_base.push_back(p.packed[index] - static_cast<int32_t>(nodes_[p.patch_chunk[i]].tokens.size()));
  }
  ++p.version;
}

void PrefixTree::patch_plan_lengths() {
  KernelPlan& p = plan_;
  bool changed = false;
  for (size_t i = 0; i < p.patch_index.size(); ++i) {
    const int32_t value = p.patch_base[i] + static_cast<int32_t>(nodes_[p.patch_chunk[i]].tokens.size());
    if (p.packed[p.patch_index[i]] != value) {
      p.packed[p.patch_index[i]] = value;
      changed = true;
    }
  }
  if (changed) ++p.version;
}

}  // namespace chunkattn
