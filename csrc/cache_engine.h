// The block cache's engine: which entries sit in the device tier and which in the host tier,
// which entry leaves the device first when the budget is exceeded, the pinned host pool, the
// asynchronous copies between the tiers, and the statistics.
//
// Device memory itself stays with the caller (torch's caching allocator): the engine is handed
// raw pointers and stream handles, never allocates device memory, and knows nothing of tensors,
// dtypes or policies. Entries are identified by integers the caller assigns.
//
// Ordering: every copy runs on the caller-supplied side stream, after that stream waits on an
// event recorded on the caller's stream; a fetch makes the caller's stream wait on the copy's
// event. Nothing ever synchronizes the device. Without CUDA (or for entries on the CPU) the same
// operations are plain synchronous memcpy.
#pragma once

#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_api.h"
#include "host_pool.h"

namespace cachekern {

// Raised when neither tier can hold an entry; the message names the sizes.
class CapacityError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct EngineStats {
  std::int64_t hits = 0, misses = 0, spills = 0, prefetches = 0;
  std::int64_t bytes_device_to_host = 0, bytes_host_to_device = 0;
  std::int64_t device_bytes = 0, peak_device_bytes = 0;
  std::int64_t host_bytes = 0, host_reserved_bytes = 0, host_chunk_allocations = 0;
  std::int64_t entries = 0, device_entries = 0, host_entries = 0;
  std::int64_t host_waits = 0;  // times the host waited for a copy to finish (backpressure)
  bool pinned = false;
};

class CacheEngine {
 public:
  static constexpr std::int64_t kUnplanned = std::numeric_limits<std::int64_t>::max();
  static constexpr int kCpu = -1;  // device index of entries that live in host memory anyway

  // Budgets in bytes; negative means unlimited.
  CacheEngine(std::int64_t device_budget, std::int64_t host_budget);
  ~CacheEngine();
  CacheEngine(const CacheEngine&) = delete;
  CacheEngine& operator=(const CacheEngine&) = delete;

  // Registers entry `id` (replacing an older one of that id) as resident in the device tier.
  // Returns the ids that must be spilled, in order, to bring the tier back within its budget;
  // an entry larger than the whole budget returns only itself.
  std::vector<std::int64_t> insert(std::int64_t id, std::int64_t nbytes, int device);

  // Ids to spill so that `nbytes` more fit in the device tier (never `exclude`).
  std::vector<std::int64_t> make_room(std::int64_t nbytes, std::int64_t exclude);

  // Moves a device-resident entry to the host tier. `src` is its device data; the copy is
  // skipped when a clean host copy already exists. Throws CapacityError when the host tier
  // cannot hold it (the entry then stays on the device).
  void spill(std::int64_t id, std::uintptr_t src, StreamHandle caller, StreamHandle side);

  // Copies a host-tier entry into `dst` (device memory allocated by the caller). keep: the entry
  // becomes device-resident (its host copy stays, clean). wait: the caller's stream waits for
  // the copy now; otherwise wait_ready() does it later (prefetch).
  void fetch(std::int64_t id, std::uintptr_t dst, StreamHandle caller, StreamHandle side,
             bool keep, bool wait, bool is_prefetch);

  // Makes the caller's stream wait for a pending prefetch of `id`, if any.
  void wait_ready(std::int64_t id, StreamHandle caller);

  // Counts an access (hit when device-resident, miss otherwise) and refreshes recency.
  void touch(std::int64_t id);
  // The device copy was written after the host copy was taken: the host copy is stale.
  void mark_dirty(std::int64_t id);
  // Planned position of the entry's next use (smaller = sooner); kUnplanned clears it.
  void set_next_use(std::int64_t id, std::int64_t position);

  bool on_device(std::int64_t id) const;
  bool contains(std::int64_t id) const;
  void remove(std::int64_t id);
  void clear();
  EngineStats stats() const;
  std::int64_t device_budget() const { return device_budget_; }
  std::int64_t host_budget() const { return pool_.budget(); }

 private:
  struct Entry {
    std::int64_t nbytes = 0;
    int device = kCpu;
    bool on_device = true;
    bool host_copy = false;  // `block` holds a copy identical to the device data
    HostPool::Block block;
    std::int64_t last_use = 0;
    std::int64_t next_use = kUnplanned;
    EventHandle event = nullptr;  // last copy that touched this entry (CUDA entries only)
    StreamHandle last_stream = 0;  // the side stream that copy ran on
    bool pending = false;         // a prefetch the caller's stream has not waited on yet
  };
  // A host block whose last copy may still be running; reusable once its event completes.
  struct DeferredBlock {
    HostPool::Block block;
    EventHandle event;
    int device;
  };

  Entry& at(std::int64_t id, const char* what);
  const Entry& at(std::int64_t id, const char* what) const;
  std::vector<std::int64_t> choose_victims(std::int64_t need, std::int64_t exclude) const;
  HostPool::Block allocate_host(std::int64_t nbytes, std::int64_t for_id);
  void drop_host_copy(Entry& entry);
  void erase(std::unordered_map<std::int64_t, Entry>::iterator it);
  void reclaim_deferred(bool wait);
  void wait_on_host(EventHandle event);
  bool uses_cuda(const Entry& entry) const { return entry.device != kCpu; }
  EventHandle entry_event(Entry& entry);
  EventHandle spare_event(int device);
  std::string sizes_message(std::int64_t nbytes) const;

  mutable std::mutex mutex_;
  std::int64_t device_budget_;
  HostPool pool_;
  std::unordered_map<std::int64_t, Entry> entries_;
  std::vector<DeferredBlock> deferred_;
  std::vector<std::pair<int, EventHandle>> spare_events_;  // (device, event), reused
  std::int64_t tick_ = 0;
  EngineStats stats_;
};

}  // namespace cachekern
