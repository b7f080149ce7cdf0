#include "chunk_pool.h"

#include <stdexcept>
#include <string>

namespace chunkattn {

ChunkPool::ChunkPool(int32_t num_chunks) : num_chunks_(num_chunks), is_free_(num_chunks, 1) {
  if (num_chunks <= 0) throw std::invalid_argument("ChunkPool: num_chunks must be positive");
  free_ids_.reserve(num_chunks);
  for (int32_t id = num_chunks - 1; id >= 0; --id) free_ids_.push_back(id);
}

int32_t ChunkPool::allocate() {
  if (free_ids_.empty()) throw std::logic_error("ChunkPool::allocate on an empty pool");
  int32_t id = free_ids_.back();
  free_ids_.pop_back();
  is_free_[id] = 0;
  return id;
}

void ChunkPool::release(int32_t chunk_id) {
  if (chunk_id < 0 || chunk_id >= num_chunks_ || is_free_[chunk_id]) {
    throw std::logic_error("ChunkPool::release of chunk " + std::to_string(chunk_id) + " that is not allocated");
  }
  is_free_[chunk_id] = 1;
  free_ids_.push_back(chunk_id);
}

}  // namespace chunkattn
