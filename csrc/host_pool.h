// A pool of host memory for spilled cache entries: large chunks are allocated once (pinned when
// CUDA is usable, so copies are truly asynchronous and run at full PCIe/NVLink-C2C speed) and
// carved into blocks with a best-fit free list. A steady-state generation loop therefore does
// no cudaHostAlloc at all: blocks released by one step are reused by the next.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace cachekern {

class HostPool {
 public:
  struct Block {
    int chunk = -1;
    std::size_t offset = 0;
    std::size_t size = 0;  // bytes reserved for the block (rounded up to kAlignment)
    char* ptr = nullptr;
  };

  static constexpr std::size_t kAlignment = 256;         // DMA-friendly block starts
  static constexpr std::size_t kDefaultChunk = 64 << 20;  // smallest chunk asked of the OS

  // budget < 0: no limit on reserved bytes. pinned: page-locked chunks via the CUDA runtime.
  HostPool(std::int64_t budget, bool pinned);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  // A block of at least nbytes (nbytes > 0), or nullopt when neither the free list nor (if
  // allow_growth) a new chunk within the budget can supply it.
  std::optional<Block> allocate(std::size_t nbytes, bool allow_growth = true);
  void release(const Block& block);
  // Returns every chunk to the system. All blocks must have been released.
  void release_chunks();

  bool pinned() const { return pinned_; }
  std::size_t bytes_in_use() const { return in_use_; }
  std::size_t bytes_reserved() const { return reserved_; }
  std::size_t chunk_allocations() const { return chunk_allocations_; }
  std::int64_t budget() const { return budget_; }

 private:
  struct Chunk {
    char* base = nullptr;
    std::size_t size = 0;
    std::map<std::size_t, std::size_t> free;  // offset -> length, coalesced
  };

  std::optional<Block> take_best_fit(std::size_t size);
  bool grow(std::size_t size);
  void free_chunk_memory(Chunk& chunk);

  std::int64_t budget_;
  bool pinned_;
  std::vector<Chunk> chunks_;
  std::size_t in_use_ = 0;
  std::size_t reserved_ = 0;
  std::size_t chunk_allocations_ = 0;
};

}  // namespace cachekern
