#include "cache_engine.h"

#include <algorithm>
#include <cstring>

namespace cachekern {

CacheEngine::CacheEngine(std::int64_t device_budget, std::int64_t host_budget)
    : device_budget_(device_budget), pool_(host_budget, cuda_usable()) {}

CacheEngine::~CacheEngine() {
  try {
    clear();
    for (auto& [device, event] : spare_events_) event_destroy(event);
  } catch (...) {
    // Never throw from a destructor (the driver may be shutting down at interpreter exit).
  }
}

CacheEngine::Entry& CacheEngine::at(std::int64_t id, const char* what) {
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    throw std::out_of_range(std::string("CacheEngine::") + what + ": no entry with id " +
                            std::to_string(id));
  }
  return it->second;
}

const CacheEngine::Entry& CacheEngine::at(std::int64_t id, const char* what) const {
  return const_cast<CacheEngine*>(this)->at(id, what);
}

std::vector<std::int64_t> CacheEngine::insert(std::int64_t id, std::int64_t nbytes, int device) {
  if (nbytes < 0) throw std::invalid_argument("CacheEngine::insert: nbytes must be >= 0");
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto it = entries_.find(id); it != entries_.end()) erase(it);
  Entry& entry = entries_[id];
  entry.nbytes = nbytes;
  entry.device = device;
  entry.last_use = ++tick_;
  stats_.device_bytes += nbytes;
  stats_.peak_device_bytes = std::max(stats_.peak_device_bytes, stats_.device_bytes);
  if (device_budget_ < 0) return {};
  if (nbytes > device_budget_) return {id};  // never fits: it lives in the host tier
  return choose_victims(stats_.device_bytes - device_budget_, id);
}

std::vector<std::int64_t> CacheEngine::make_room(std::int64_t nbytes, std::int64_t exclude) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (device_budget_ < 0) return {};
  return choose_victims(stats_.device_bytes + nbytes - device_budget_, exclude);
}

std::vector<std::int64_t> CacheEngine::choose_victims(std::int64_t need,
                                                      std::int64_t exclude) const {
  if (need <= 0) return {};
  std::vector<const std::pair<const std::int64_t, Entry>*> candidates;
  for (const auto& item : entries_) {
    if (item.first != exclude && item.second.on_device && item.second.nbytes > 0) {
      candidates.push_back(&item);
    }
  }
  // Farthest planned next use leaves first (Belady); unplanned entries rank as "never" and,
  // among equals, the least recently used leaves first.
  std::sort(candidates.begin(), candidates.end(), [](const auto* a, const auto* b) {
    if (a->second.next_use != b->second.next_use) return a->second.next_use > b->second.next_use;
    return a->second.last_use < b->second.last_use;
  });
  std::vector<std::int64_t> victims;
  for (const auto* item : candidates) {
    if (need <= 0) break;
    victims.push_back(item->first);
    need -= item->second.nbytes;
  }
  return victims;
}

EventHandle CacheEngine::spare_event(int device) {
  for (auto it = spare_events_.begin(); it != spare_events_.end(); ++it) {
    if (it->first == device) {
      EventHandle event = it->second;
      spare_events_.erase(it);
      return event;
    }
  }
  return event_create(device);
}

EventHandle CacheEngine::entry_event(Entry& entry) {
  if (entry.event == nullptr) entry.event = spare_event(entry.device);
  return entry.event;
}

std::string CacheEngine::sizes_message(std::int64_t nbytes) const {
  // std::to_string rather than iostreams: a crash inside ostream's number formatting was seen
  // on a GPU machine whose process had loaded another libstdc++ (torch 2.11, gcc 13 build).
  auto budget = [](std::int64_t b) { return b < 0 ? std::string("unlimited") : std::to_string(b); };
  std::string message = "BlockCache cannot hold an entry of " + std::to_string(nbytes) +
                        " bytes: device budget " + budget(device_budget_) + " bytes (" +
                        std::to_string(stats_.device_bytes) + " in use), host budget " +
                        budget(pool_.budget()) + " bytes (" + std::to_string(pool_.bytes_in_use()) +
                        " in use, " + std::to_string(pool_.bytes_reserved()) + " reserved)";
  if (pool_.budget() < 0) message += "; host memory allocation failed";
  return message;
}

void CacheEngine::wait_on_host(EventHandle event) {
  if (!event_done(event)) {
    ++stats_.host_waits;
    event_synchronize(event);
  }
}

void CacheEngine::reclaim_deferred(bool wait) {
  auto keep = deferred_.begin();
  for (auto it = deferred_.begin(); it != deferred_.end(); ++it) {
    if (wait) wait_on_host(it->event);
    if (wait || event_done(it->event)) {
      pool_.release(it->block);
      spare_events_.emplace_back(it->device, it->event);
    } else {
      *keep++ = *it;
    }
  }
  deferred_.erase(keep, deferred_.end());
}

void CacheEngine::drop_host_copy(Entry& entry) {
  if (!entry.host_copy) return;
  entry.host_copy = false;
  if (entry.block.size == 0) return;
  if (uses_cuda(entry) && entry.event != nullptr) {
    // The last copy touching the block may still run. A fresh event behind it on the same
    // (in-order) side stream marks when the block is free again; the entry keeps its own event
    // for a prefetch the caller may still wait on. No host wait anywhere.
    EventHandle released = spare_event(entry.device);
    event_record(released, entry.last_stream, entry.device);
    deferred_.push_back({entry.block, released, entry.device});
  } else {
    pool_.release(entry.block);
  }
  entry.block = HostPool::Block{};
}

HostPool::Block CacheEngine::allocate_host(std::int64_t nbytes, std::int64_t for_id) {
  reclaim_deferred(false);
  if (auto block = pool_.allocate(nbytes, /*allow_growth=*/false)) return *block;
  // Blocks whose copies are still running come free soon. While they hold less than twice the
  // entries' live host copies, grow the pool: the host may run that far ahead of the GPU without
  // waiting. Beyond that, wait for them, oldest first, rather than grow without bound
  // (cudaHostAlloc is slow and can synchronize the device).
  std::size_t in_flight = 0;
  for (const DeferredBlock& d : deferred_) in_flight += d.block.size;
  if (in_flight < 2 * (pool_.bytes_in_use() - in_flight)) {
    if (auto block = pool_.allocate(nbytes)) return *block;
  }
  while (!deferred_.empty()) {
    DeferredBlock oldest = deferred_.front();
    deferred_.erase(deferred_.begin());
    wait_on_host(oldest.event);
    pool_.release(oldest.block);
    spare_events_.emplace_back(oldest.device, oldest.event);
    if (auto block = pool_.allocate(nbytes, /*allow_growth=*/false)) return *block;
  }
  if (auto block = pool_.allocate(nbytes)) return *block;
  // Clean host copies of entries that are on the device anyway are only a shortcut for their
  // next spill: give them up, least recently used first.
  std::vector<std::pair<std::int64_t, Entry*>> redundant;
  for (auto& [id, entry] : entries_) {
    if (id != for_id && entry.on_device && entry.host_copy) redundant.emplace_back(entry.last_use, &entry);
  }
  std::sort(redundant.begin(), redundant.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [last_use, entry] : redundant) {
    drop_host_copy(*entry);
    reclaim_deferred(true);
    if (auto block = pool_.allocate(nbytes)) return *block;
  }
  reclaim_deferred(true);
  if (auto block = pool_.allocate(nbytes)) return *block;
  throw CapacityError(sizes_message(nbytes));
}

void CacheEngine::spill(std::int64_t id, std::uintptr_t src, StreamHandle caller,
                        StreamHandle side) {
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = at(id, "spill");
  if (!entry.on_device) throw std::logic_error("CacheEngine::spill: entry is not on the device");
  if (!entry.host_copy) {
    if (entry.nbytes > 0) {
      entry.block = allocate_host(entry.nbytes, id);
      void* dst = entry.block.ptr;
      const void* from = reinterpret_cast<const void*>(src);
      if (uses_cuda(entry)) {
        // The data is produced on the caller's stream: the side stream starts after it.
        EventHandle event = entry_event(entry);
        event_record(event, caller, entry.device);
        stream_wait_event(side, event, entry.device);
        memcpy_device_to_host_async(dst, from, entry.nbytes, side, entry.device);
        event_record(event, side, entry.device);
        entry.last_stream = side;
      } else {
        std::memcpy(dst, from, entry.nbytes);
      }
      stats_.bytes_device_to_host += entry.nbytes;
    }
    entry.host_copy = true;
  }
  entry.on_device = false;
  entry.pending = false;
  stats_.device_bytes -= entry.nbytes;
  ++stats_.spills;
}

void CacheEngine::fetch(std::int64_t id, std::uintptr_t dst, StreamHandle caller,
                        StreamHandle side, bool keep, bool wait, bool is_prefetch) {
  if (!keep && !wait) throw std::invalid_argument("CacheEngine::fetch: need keep or wait");
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = at(id, "fetch");
  if (entry.on_device) throw std::logic_error("CacheEngine::fetch: entry is already on the device");
  if (entry.nbytes > 0) {
    void* to = reinterpret_cast<void*>(dst);
    if (uses_cuda(entry)) {
      // `dst` was allocated on the caller's stream, which may still use that memory.
      EventHandle event = entry_event(entry);
      event_record(event, caller, entry.device);
      stream_wait_event(side, event, entry.device);
      memcpy_host_to_device_async(to, entry.block.ptr, entry.nbytes, side, entry.device);
      event_record(event, side, entry.device);
      entry.last_stream = side;
      if (wait) {
        stream_wait_event(caller, event, entry.device);
      } else {
        entry.pending = true;
      }
    } else {
      std::memcpy(to, entry.block.ptr, entry.nbytes);
    }
    stats_.bytes_host_to_device += entry.nbytes;
  }
  if (is_prefetch) ++stats_.prefetches;
  if (keep) {
    entry.on_device = true;
    stats_.device_bytes += entry.nbytes;
    stats_.peak_device_bytes = std::max(stats_.peak_device_bytes, stats_.device_bytes);
  }
}

void CacheEngine::wait_ready(std::int64_t id, StreamHandle caller) {
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = at(id, "wait_ready");
  if (!entry.pending) return;
  stream_wait_event(caller, entry.event, entry.device);
  entry.pending = false;
}

void CacheEngine::touch(std::int64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = at(id, "touch");
  entry.last_use = ++tick_;
  if (entry.on_device) ++stats_.hits; else ++stats_.misses;
}

void CacheEngine::mark_dirty(std::int64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = at(id, "mark_dirty");
  if (entry.on_device) drop_host_copy(entry);
}

void CacheEngine::set_next_use(std::int64_t id, std::int64_t position) {
  std::lock_guard<std::mutex> lock(mutex_);
  at(id, "set_next_use").next_use = position;
}

bool CacheEngine::on_device(std::int64_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return at(id, "on_device").on_device;
}

bool CacheEngine::contains(std::int64_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.count(id) != 0;
}

void CacheEngine::erase(std::unordered_map<std::int64_t, Entry>::iterator it) {
  Entry& entry = it->second;
  drop_host_copy(entry);
  if (entry.on_device) stats_.device_bytes -= entry.nbytes;
  // Re-recording this event later is safe even if its copy still runs: device memory is freed
  // by the caller only after record_stream on the side stream, and the host block is deferred.
  if (entry.event != nullptr) spare_events_.emplace_back(entry.device, entry.event);
  entries_.erase(it);
}

void CacheEngine::remove(std::int64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    throw std::out_of_range("CacheEngine::remove: no entry with id " + std::to_string(id));
  }
  erase(it);
}

void CacheEngine::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (!entries_.empty()) erase(entries_.begin());
  reclaim_deferred(true);
  pool_.release_chunks();
}

EngineStats CacheEngine::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  EngineStats out = stats_;
  out.host_bytes = 0;
  out.entries = static_cast<std::int64_t>(entries_.size());
  for (const auto& [id, entry] : entries_) {
    if (entry.host_copy) out.host_bytes += entry.nbytes;
    if (entry.on_device) ++out.device_entries; else ++out.host_entries;
  }
  out.host_reserved_bytes = static_cast<std::int64_t>(pool_.bytes_reserved());
  out.host_chunk_allocations = static_cast<std::int64_t>(pool_.chunk_allocations());
  out.pinned = pool_.pinned();
  return out;
}

}  // namespace cachekern
