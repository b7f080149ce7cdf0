// Prefix tree of fixed-size KV chunks shared between sequences (ChunkAttention's prefix-aware KV
// cache). Framework-free. Each tree node is one pool chunk, so a node is named by its chunk id.
//
// - A full chunk is shared when its token ids and all tokens before it match; partial tail chunks
//   are always private to one sequence.
// - A node's ref_count is the number of live sequences whose path runs through it. Nodes with
//   ref_count 0 stay in the tree as prefix cache (full, indexed chunks only) and are evicted
//   least-recently-used first, leaves before their parents, when the pool runs short.
// - Sequences are ordered depth-first, so every node covers a contiguous range of sequences.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "chunk_pool.h"
#include "kernel_plan.h"

namespace chunkattn {

// Thrown when the pool cannot hold a request even after evicting every unreferenced cached chunk.
// The tree is left exactly as it was.
class PoolExhausted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TreeStats {
  int32_t num_chunks = 0;
  int32_t chunks_used = 0;    // referenced by a live sequence or held as cache
  int32_t chunks_free = 0;
  int32_t chunks_cached = 0;  // held as cache only (ref_count 0), evictable
  int64_t num_sequences = 0;
  int64_t tokens = 0;         // sum of live sequence lengths
  int64_t stored_tokens = 0;  // tokens in chunks referenced by live sequences, each chunk once
  int64_t shared_tokens = 0;  // tokens in chunks referenced by two or more live sequences
  int64_t evictions = 0;      // chunks evicted from the cache so far
};

class PrefixTree {
 public:
  PrefixTree(int32_t chunk_size, int32_t num_chunks, bool share_prefix = true);

  int32_t chunk_size() const { return chunk_size_; }
  int32_t num_chunks() const { return pool_.num_chunks(); }

  // Tokens of `tokens` whose KV is already held in full, shareable chunks (no state change).
  int64_t match_prefix(const std::vector<int32_t>& tokens) const;
  // Whether add_sequence(tokens) would succeed now, counting evictable cache.
  bool can_add(const std::vector<int32_t>& tokens) const;
  // Adds a sequence: reuses matching full chunks, allocates chunks for the rest. Returns its id.
  int64_t add_sequence(const std::vector<int32_t>& tokens);
  // Grows each sequence by one token; returns each token's slot (chunk_id * chunk_size + offset).
  // All or nothing: on PoolExhausted no sequence has grown.
  std::vector<int64_t> append_tokens(const std::vector<int64_t>& seq_ids, const std::vector<int32_t>& tokens);
  // Drops a sequence. With cache, its full indexed chunks stay in the tree as LRU prefix cache.
  void remove_sequence(int64_t seq_id, bool cache);
  // Evicts up to num_chunks unreferenced cached chunks, least recently used first. Returns how many.
  int32_t evict(int32_t num_chunks);
  void clear_cache();

  int64_t num_tokens(int64_t seq_id) const { return seq(seq_id).num_tokens; }
  int64_t num_cached_tokens(int64_t seq_id) const { return seq(seq_id).num_cached_tokens; }
  const std::vector<int32_t>& chunk_ids(int64_t seq_id) const { return seq(seq_id).path; }
  // Slots of positions [start, end) of a sequence, written to out[0 .. end-start).
  void slots(int64_t seq_id, int64_t start, int64_t end, int64_t* out) const;
  // Live sequences in depth-first order: the row order of decode().
  const std::vector<int64_t>& sequence_order();
  // The decode plan for the current tree, rebuilt only when the tree's structure changed.
  const KernelPlan& plan(PartitionMode mode, int32_t max_item_chunks);

  TreeStats stats() const;
  uint64_t structure_version() const { return structure_version_; }
  // Checks every invariant (ref counts, counters, index, pool accounting); throws std::logic_error.
  void check_invariants() const;

 private:
  struct Node {
    int32_t parent = -1;
    std::vector<int32_t> children;  // insertion order: the depth-first order of sequences
    std::vector<int32_t> tokens;
    std::vector<int64_t> seq_ids;   // live sequences whose last chunk is this node
    int32_t ref_count = 0;
    uint64_t last_access = 0;
    uint64_t key = 0;      // hash of (parent, tokens) once indexed
    bool in_use = false;
    bool indexed = false;  // full and findable by match_prefix
  };
  struct Sequence {
    std::vector<int32_t> path;  // chunk ids from the root down
    int64_t num_tokens = 0;
    int64_t num_cached_tokens = 0;
  };

  const Sequence& seq(int64_t seq_id) const;
  Sequence& seq(int64_t seq_id);
  // Chunk ids of the longest chain of indexed full chunks matching tokens from the start.
  std::vector<int32_t> match_path(const std::vector<int32_t>& tokens) const;
  int32_t find_child(int32_t parent, const int32_t* tokens) const;
  uint64_t key_of(int32_t parent, const int32_t* tokens, int32_t n) const;
  int32_t new_node(int32_t parent, const int32_t* tokens, int32_t n);
  void try_index(int32_t node);
  void free_subtree(int32_t node);
  void ref(int32_t node);
  void unref(int32_t node);
  // Makes `num_new` chunks allocatable by evicting cache, or throws PoolExhausted.
  void reserve_chunks(int32_t num_new, const char* what);
  void build_plan(PartitionMode mode, int32_t max_item_chunks);
  void patch_plan_lengths();

  int32_t chunk_size_;
  bool share_prefix_;
  int32_t root_;
  ChunkPool pool_;
  std::vector<Node> nodes_;  // [num_chunks + 1]; nodes_[root_] is the root
  std::unordered_multimap<uint64_t, int32_t> index_;
  std::unordered_map<int64_t, Sequence> seqs_;
  int64_t next_seq_id_ = 0;
  uint64_t clock_ = 0;
  uint64_t structure_version_ = 1;
  // Counters kept current on every change.
  int32_t num_cached_chunks_ = 0;
  int64_t num_live_tokens_ = 0;
  int64_t num_stored_tokens_ = 0;
  int64_t num_shared_tokens_ = 0;
  int64_t num_evictions_ = 0;
  // Derived views, rebuilt lazily.
  std::vector<int64_t> order_;
  uint64_t order_version_ = 0;
  KernelPlan plan_;
  uint64_t plan_version_ = 0;
  PartitionMode plan_mode_ = PartitionMode::kAuto;
  int32_t plan_max_item_chunks_ = 0;
};

}  // namespace chunkattn
