#include "prefix_tree.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <unordered_set>
#include <utility>

namespace chunkattn {

namespace {

uint64_t mix(uint64_t h, uint64_t x) {
  h ^= x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdULL;
}

}  // namespace

PrefixTree::PrefixTree(int32_t chunk_size, int32_t num_chunks, bool share_prefix)
    : chunk_size_(chunk_size),
      share_prefix_(share_prefix),
      root_(num_chunks),
      pool_(num_chunks),
      nodes_(static_cast<size_t>(num_chunks) + 1) {
  if (chunk_size <= 0) throw std::invalid_argument("PrefixTree: chunk_size must be positive");
  nodes_[root_].in_use = true;
}

// ---- public API ---------------------------------------------------------------------------

int64_t PrefixTree::match_prefix(const std::vector<int32_t>& tokens) const {
  return static_cast<int64_t>(match_path(tokens).size()) * chunk_size_;
}

bool PrefixTree::can_add(const std::vector<int32_t>& tokens) const {
  if (tokens.empty()) return false;
  std::vector<int32_t> path = match_path(tokens);
  int64_t num_matched = static_cast<int64_t>(path.size()) * chunk_size_;
  int64_t num_new = (static_cast<int64_t>(tokens.size()) - num_matched + chunk_size_ - 1) / chunk_size_;
  int32_t num_revived = 0;
  for (int32_t node : path) num_revived += nodes_[node].ref_count == 0;
  return num_new <= pool_.num_free() + num_cached_chunks_ - num_revived;
}

int64_t PrefixTree::add_sequence(const std::vector<int32_t>& tokens) {
  if (tokens.empty()) throw std::invalid_argument("add_sequence: a sequence needs at least one token");
  std::vector<int32_t> path = match_path(tokens);
  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  const int64_t num_matched = static_cast<int64_t>(path.size()) * chunk_size_;
  const int64_t num_new = (num_tokens - num_matched + chunk_size_ - 1) / chunk_size_;
  int32_t num_revived = 0;
  for (int32_t node : path) num_revived += nodes_[node].ref_count == 0;
  if (num_new > pool_.num_free() + num_cached_chunks_ - num_revived) {
    throw PoolExhausted("KV pool exhausted: a sequence of " + std::to_string(num_tokens) + " tokens needs " +
                        std::to_string(num_new) + " new chunks, " +
                        std::to_string(pool_.num_free() + num_cached_chunks_ - num_revived) +
                        " are free or evictable (pool of " + std::to_string(pool_.num_chunks()) +
                        " chunks of " + std::to_string(chunk_size_) + " tokens)");
  }
  const uint64_t now = ++clock_;
  for (int32_t node : path) {
    ref(node);
    nodes_[node].last_access = now;
  }
  reserve_chunks(static_cast<int32_t>(num_new), "add_sequence");
  int32_t parent = path.empty() ? root_ : path.back();
  for (int64_t pos = num_matched; pos < num_tokens; pos += chunk_size_) {
    int32_t n = static_cast<int32_t>(std::min<int64_t>(chunk_size_, num_tokens - pos));
    int32_t node = new_node(parent, tokens.data() + pos, n);
    ref(node);
    path.push_back(node);
    parent = node;
  }
  const int64_t seq_id = next_seq_id_++;
  nodes_[parent].seq_ids.push_back(seq_id);
  seqs_.emplace(seq_id, Sequence{std::move(path), num_tokens, num_matched});
  num_live_tokens_ += num_tokens;
  ++structure_version_;
  return seq_id;
}

std::vector<int64_t> PrefixTree::append_tokens(const std::vector<int64_t>& seq_ids,
                                               const std::vector<int32_t>& tokens) {
  if (seq_ids.size() != tokens.size()) {
    throw std::invalid_argument("append_tokens: " + std::to_string(seq_ids.size()) + " sequence ids but " +
                                std::to_string(tokens.size()) + " tokens");
  }
  std::unordered_set<int64_t> seen;
  int32_t num_new = 0;
  for (int64_t id : seq_ids) {
    if (!seen.insert(id).second) throw std::invalid_argument("append_tokens: sequence " + std::to_string(id) + " given twice");
    num_new += seq(id).num_tokens % chunk_size_ == 0;
  }
  if (num_new > pool_.num_free() + num_cached_chunks_) {
    throw PoolExhausted("KV pool exhausted: appending to " + std::to_string(seq_ids.size()) + " sequences needs " +
                        std::to_string(num_new) + " new chunks, " +
                        std::to_string(pool_.num_free() + num_cached_chunks_) + " are free or evictable");
  }
  reserve_chunks(num_new, "append_tokens");
  std::vector<int64_t> slots(seq_ids.size());
  for (size_t i = 0; i < seq_ids.size(); ++i) {
    Sequence& s = seq(seq_ids[i]);
    const int32_t offset = static_cast<int32_t>(s.num_tokens % chunk_size_);
    if (offset == 0) {
      const int32_t parent = s.path.back();
      const int32_t node = new_node(parent, &tokens[i], 1);
      ref(node);
      auto& parent_seqs = nodes_[parent].seq_ids;
      parent_seqs.erase(std::find(parent_seqs.begin(), parent_seqs.end(), seq_ids[i]));
      nodes_[node].seq_ids.push_back(seq_ids[i]);
      s.path.push_back(node);
    } else {
      Node& tail = nodes_[s.path.back()];
      tail.tokens.push_back(tokens[i]);
      num_stored_tokens_ += 1;
      if (static_cast<int32_t>(tail.tokens.size()) == chunk_size_) try_index(s.path.back());
    }
    slots[i] = static_cast<int64_t>(s.path.back()) * chunk_size_ + offset;
    s.num_tokens += 1;
  }
  num_live_tokens_ += static_cast<int64_t>(seq_ids.size());
  if (num_new > 0) ++structure_version_;
  return slots;
}

void PrefixTree::remove_sequence(int64_t seq_id, bool cache) {
  Sequence& s = seq(seq_id);
  auto& tail_seqs = nodes_[s.path.back()].seq_ids;
  tail_seqs.erase(std::find(tail_seqs.begin(), tail_seqs.end(), seq_id));
  const uint64_t now = ++clock_;
  for (auto it = s.path.rbegin(); it != s.path.rend(); ++it) {
    unref(*it);
    nodes_[*it].last_access = now;
  }
  for (auto it = s.path.rbegin(); it != s.path.rend(); ++it) {
    const Node& node = nodes_[*it];
    if (node.in_use && node.ref_count == 0 && !(cache && node.indexed)) free_subtree(*it);
  }
  num_live_tokens_ -= s.num_tokens;
  seqs_.erase(seq_id);
  ++structure_version_;
}

int32_t PrefixTree::evict(int32_t num_chunks) {
  using Entry = std::pair<uint64_t, int32_t>;  // (last_access, node): least recent first
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> leaves;
  auto is_evictable_leaf = [this](int32_t id) {
    const Node& n = nodes_[id];
    return id != root_ && n.in_use && n.ref_count == 0 && n.children.empty();
  };
  for (int32_t id = 0; id < root_; ++id) {
    if (is_evictable_leaf(id)) leaves.emplace(nodes_[id].last_access, id);
  }
  int32_t num_evicted = 0;
  while (num_evicted < num_chunks && !leaves.empty()) {
    const int32_t id = leaves.top().second;
    leaves.pop();
    const int32_t parent = nodes_[id].parent;
    free_subtree(id);
    ++num_evicted;
    ++num_evictions_;
    if (is_evictable_leaf(parent)) leaves.emplace(nodes_[parent].last_access, parent);
  }
  return num_evicted;
}

void PrefixTree::clear_cache() { evict(num_cached_chunks_); }

void PrefixTree::slots(int64_t seq_id, int64_t start, int64_t end, int64_t* out) const {
  const Sequence& s = seq(seq_id);
  if (start < 0 || start > end || end > s.num_tokens) {
    throw std::invalid_argument("slots: positions [" + std::to_string(start) + ", " + std::to_string(end) +
                                ") outside a sequence of " + std::to_string(s.num_tokens) + " tokens");
  }
  for (int64_t p = start; p < end; ++p) {
    out[p - start] = static_cast<int64_t>(s.path[p / chunk_size_]) * chunk_size_ + p % chunk_size_;
  }
}

const std::vector<int64_t>& PrefixTree::sequence_order() {
  if (order_version_ == structure_version_) return order_;
  order_.clear();
  std::vector<int32_t> stack{root_};
  while (!stack.empty()) {
    const Node& node = nodes_[stack.back()];
    stack.pop_back();
    order_.insert(order_.end(), node.seq_ids.begin(), node.seq_ids.end());
    for (auto it = node.children.rbegin(); it != node.children.rend(); ++it) stack.push_back(*it);
  }
  order_version_ = structure_version_;
  return order_;
}

const KernelPlan& PrefixTree::plan(PartitionMode mode, int32_t max_item_chunks) {
  if (plan_version_ != structure_version_ || mode != plan_mode_ || max_item_chunks != plan_max_item_chunks_) {
    build_plan(mode, max_item_chunks);
    plan_version_ = structure_version_;
    plan_mode_ = mode;
    plan_max_item_chunks_ = max_item_chunks;
  } else {
    patch_plan_lengths();
  }
  return plan_;
}

TreeStats PrefixTree::stats() const {
  TreeStats st;
  st.num_chunks = pool_.num_chunks();
  st.chunks_free = pool_.num_free();
  st.chunks_used = pool_.num_chunks() - pool_.num_free();
  st.chunks_cached = num_cached_chunks_;
  st.num_sequences = static_cast<int64_t>(seqs_.size());
  st.tokens = num_live_tokens_;
  st.stored_tokens = num_stored_tokens_;
  st.shared_tokens = num_shared_tokens_;
  st.evictions = num_evictions_;
  return st;
}

void PrefixTree::check_invariants() const {
  auto fail = [](const std::string& what) { throw std::logic_error("PrefixTree invariant broken: " + what); };
  std::vector<int32_t> refs(nodes_.size(), 0);
  int64_t live_tokens = 0;
  for (const auto& [id, s] : seqs_) {
    if (s.path.empty()) fail("sequence without chunks");
    int32_t parent = root_;
    int64_t held = 0;
    for (size_t k = 0; k < s.path.size(); ++k) {
      const Node& n = nodes_[s.path[k]];
      if (!n.in_use || n.parent != parent) fail("broken path of sequence " + std::to_string(id));
      if (k + 1 < s.path.size() && static_cast<int32_t>(n.tokens.size()) != chunk_size_) fail("partial inner chunk");
      held += static_cast<int64_t>(n.tokens.size());
      ++refs[s.path[k]];
      parent = s.path[k];
    }
    if (held != s.num_tokens) fail("sequence length does not match its chunks");
    const auto& tail_seqs = nodes_[s.path.back()].seq_ids;
    if (std::find(tail_seqs.begin(), tail_seqs.end(), id) == tail_seqs.end()) fail("sequence missing at its tail");
    live_tokens += s.num_tokens;
  }
  int32_t in_use = 0, cached = 0;
  int64_t stored = 0, shared = 0;
  size_t indexed = 0;
  for (int32_t id = 0; id < root_; ++id) {
    const Node& n = nodes_[id];
    if (!n.in_use) continue;
    ++in_use;
    if (n.ref_count != refs[id]) fail("ref_count of chunk " + std::to_string(id));
    if (n.ref_count == 0) ++cached;
    if (n.ref_count >= 1) stored += static_cast<int64_t>(n.tokens.size());
    if (n.ref_count >= 2) shared += static_cast<int64_t>(n.tokens.size());
    if (n.indexed) ++indexed;
    const auto& siblings = nodes_[n.parent].children;
    if (std::find(siblings.begin(), siblings.end(), id) == siblings.end()) fail("chunk missing from its parent");
  }
  if (in_use != pool_.num_chunks() - pool_.num_free()) fail("pool accounting");
  if (cached != num_cached_chunks_) fail("cached chunk counter");
  if (stored != num_stored_tokens_) fail("stored token counter");
  if (shared != num_shared_tokens_) fail("shared token counter");
  if (live_tokens != num_live_tokens_) fail("live token counter");
  if (indexed != index_.size()) fail("index size");
}

// ---- private helpers ------------------------------------------------------------------------

const PrefixTree::Sequence& PrefixTree::seq(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) throw std::invalid_argument("unknown sequence id " + std::to_string(seq_id));
  return it->second;
}

PrefixTree::Sequence& PrefixTree::seq(int64_t seq_id) {
  return const_cast<Sequence&>(static_cast<const PrefixTree*>(this)->seq(seq_id));
}

std::vector<int32_t> PrefixTree::match_path(const std::vector<int32_t>& tokens) const {
  std::vector<int32_t> path;
  if (!share_prefix_) return path;
  int32_t parent = root_;
  for (size_t pos = 0; pos + chunk_size_ <= tokens.size(); pos += chunk_size_) {
    const int32_t child = find_child(parent, tokens.data() + pos);
    if (child < 0) break;
    path.push_back(child);
    parent = child;
  }
  return path;
}

int32_t PrefixTree::find_child(int32_t parent, const int32_t* tokens) const {
  auto [begin, end] = index_.equal_range(key_of(parent, tokens, chunk_size_));
  for (auto it = begin; it != end; ++it) {
    const Node& n = nodes_[it->second];
    if (n.parent == parent && std::equal(n.tokens.begin(), n.tokens.end(), tokens)) return it->second;
  }
  return -1;
}

uint64_t PrefixTree::key_of(int32_t parent, const int32_t* tokens, int32_t n) const {
  uint64_t h = mix(0x84222325cbf29ce4ULL, static_cast<uint64_t>(parent));
  for (int32_t i = 0; i < n; ++i) h = mix(h, static_cast<uint32_t>(tokens[i]));
  return h;
}

int32_t PrefixTree::new_node(int32_t parent, const int32_t* tokens, int32_t n) {
  const int32_t id = pool_.allocate();
  Node& node = nodes_[id];
  node.parent = parent;
  node.tokens.assign(tokens, tokens + n);
  node.in_use = true;
  node.last_access = clock_;
  nodes_[parent].children.push_back(id);
  ++num_cached_chunks_;  // unreferenced until the caller's ref()
  if (n == chunk_size_) try_index(id);
  return id;
}

void PrefixTree::try_index(int32_t node) {
  Node& n = nodes_[node];
  if (!share_prefix_ || n.indexed || static_cast<int32_t>(n.tokens.size()) != chunk_size_) return;
  if (find_child(n.parent, n.tokens.data()) >= 0) return;  // an identical sibling is already shared
  n.key = key_of(n.parent, n.tokens.data(), chunk_size_);
  index_.emplace(n.key, node);
  n.indexed = true;
}

void PrefixTree::free_subtree(int32_t node) {
  while (!nodes_[node].children.empty()) free_subtree(nodes_[node].children.back());
  Node& n = nodes_[node];
  if (n.ref_count != 0 || !n.seq_ids.empty()) throw std::logic_error("free_subtree on a referenced chunk");
  auto& siblings = nodes_[n.parent].children;
  siblings.erase(std::find(siblings.begin(), siblings.end(), node));
  if (n.indexed) {
    auto [begin, end] = index_.equal_range(n.key);
    for (auto it = begin; it != end; ++it) {
      if (it->second == node) {
        index_.erase(it);
        break;
      }
    }
  }
  --num_cached_chunks_;
  n = Node{};
  pool_.release(node);
}

void PrefixTree::ref(int32_t node) {
  Node& n = nodes_[node];
  if (n.ref_count == 0) {
    --num_cached_chunks_;
    num_stored_tokens_ += static_cast<int64_t>(n.tokens.size());
  }
  if (++n.ref_count == 2) num_shared_tokens_ += static_cast<int64_t>(n.tokens.size());
}

void PrefixTree::unref(int32_t node) {
  Node& n = nodes_[node];
  if (n.ref_count == 2) num_shared_tokens_ -= static_cast<int64_t>(n.tokens.size());
  if (--n.ref_count == 0) {
    ++num_cached_chunks_;
    num_stored_tokens_ -= static_cast<int64_t>(n.tokens.size());
  }
}

void PrefixTree::reserve_chunks(int32_t num_new, const char* what) {
  if (pool_.num_free() < num_new) evict(num_new - pool_.num_free());
  if (pool_.num_free() < num_new) throw std::logic_error(std::string(what) + ": eviction freed too few chunks");
}

}  // namespace chunkattn
