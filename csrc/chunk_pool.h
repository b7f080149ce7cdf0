// Fixed-size KV chunk allocator: hands out chunk ids in [0, num_chunks). Owns only the free list;
// the KV memory itself is a tensor owned by the Python ChunkAttention.
#pragma once

#include <cstdint>
#include <vector>

namespace chunkattn {

class ChunkPool {
 public:
  explicit ChunkPool(int32_t num_chunks);

  int32_t num_chunks() const { return num_chunks_; }
  int32_t num_free() const { return static_cast<int32_t>(free_ids_.size()); }
  bool can_allocate(int32_t n) const { return n <= num_free(); }
  // Returns one free chunk id. Precondition: can_allocate(1).
  int32_t allocate();
  void release(int32_t chunk_id);

 private:
  int32_t num_chunks_;
  std::vector<int32_t> free_ids_;  // stack; lowest ids handed out first
  std::vector<uint8_t> is_free_;
};

}  // namespace chunkattn
