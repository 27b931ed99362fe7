#include "host_pool.h"

#include <cstdlib>
#include <iterator>
#include <limits>
#include <stdexcept>

#include "cuda_api.h"

namespace cachekern {

namespace {
std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }
}  // namespace

HostPool::HostPool(std::int64_t budget, bool pinned) : budget_(budget), pinned_(pinned) {}

HostPool::~HostPool() {
  for (Chunk& chunk : chunks_) {
    try {
      free_chunk_memory(chunk);
    } catch (...) {
      // A destructor must not throw; at interpreter exit the driver may already be gone.
    }
  }
}

std::optional<HostPool::Block> HostPool::allocate(std::size_t nbytes, bool allow_growth) {
  if (nbytes == 0) throw std::invalid_argument("HostPool::allocate: nbytes must be positive");
  const std::size_t size = round_up(nbytes, kAlignment);
  if (auto block = take_best_fit(size)) return block;
  if (!allow_growth || !grow(size)) return std::nullopt;
  return take_best_fit(size);
}

std::optional<HostPool::Block> HostPool::take_best_fit(std::size_t size) {
  int best_chunk = -1;
  std::size_t best_offset = 0;
  std::size_t best_length = std::numeric_limits<std::size_t>::max();
  for (int c = 0; c < static_cast<int>(chunks_.size()); ++c) {
    for (const auto& [offset, length] : chunks_[c].free) {
      if (length >= size && length < best_length) {
        best_chunk = c;
        best_offset = offset;
        best_length = length;
      }
    }
  }
  if (best_chunk < 0) return std::nullopt;
  Chunk& chunk = chunks_[best_chunk];
  chunk.free.erase(best_offset);
  if (best_length > size) chunk.free.emplace(best_offset + size, best_length - size);
  in_use_ += size;
  return Block{best_chunk, best_offset, size, chunk.base + best_offset};
}

bool HostPool::grow(std::size_t size) {
  std::size_t chunk_size = size > kDefaultChunk ? size : kDefaultChunk;
  if (budget_ >= 0) {
    const std::size_t room = static_cast<std::size_t>(budget_) - reserved_;
    if (size > room) return false;
    // A full default chunk would overrun the budget: take exactly what fits.
    if (chunk_size > room) chunk_size = room;
  }
  char* base = nullptr;
  if (pinned_) {
    base = static_cast<char*>(pinned_alloc(chunk_size));
  } else {
    base = static_cast<char*>(std::aligned_alloc(kAlignment, round_up(chunk_size, kAlignment)));
  }
  if (base == nullptr) return false;
  Chunk chunk;
  chunk.base = base;
  chunk.size = chunk_size;
  chunk.free.emplace(0, chunk_size);
  chunks_.push_back(std::move(chunk));
  reserved_ += chunk_size;
  ++chunk_allocations_;
  return true;
}

void HostPool::release(const Block& block) {
  Chunk& chunk = chunks_.at(block.chunk);
  std::size_t offset = block.offset;
  std::size_t length = block.size;
  // Coalesce with the free neighbours so large entries can reuse the space later.
  auto next = chunk.free.lower_bound(offset);
  if (next != chunk.free.end() && offset + length == next->first) {
    length += next->second;
    next = chunk.free.erase(next);
  }
  if (next != chunk.free.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      length += prev->second;
      chunk.free.erase(prev);
    }
  }
  chunk.free.emplace(offset, length);
  in_use_ -= block.size;
}

void HostPool::release_chunks() {
  if (in_use_ != 0) throw std::logic_error("HostPool::release_chunks: blocks still in use");
  for (Chunk& chunk : chunks_) free_chunk_memory(chunk);
  chunks_.clear();
  reserved_ = 0;
}

void HostPool::free_chunk_memory(Chunk& chunk) {
  if (chunk.base == nullptr) return;
  if (pinned_) {
    pinned_free(chunk.base);
  } else {
    std::free(chunk.base);
  }
  chunk.base = nullptr;
}

}  // namespace cachekern
