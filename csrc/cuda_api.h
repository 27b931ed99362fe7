// Thin, checked wrappers over the few CUDA runtime calls the block cache needs.
//
// The rest of the extension calls only these functions, so it compiles unchanged with and
// without a CUDA toolkit: built without CUDA (CACHEKERN_WITH_CUDA undefined) every wrapper
// either reports "not available" or throws, and the cache runs over plain host memory.
// Stream and event handles cross the Python boundary as integers (torch's
// `Stream.cuda_stream`), so nothing here depends on libtorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cachekern {

using StreamHandle = std::uintptr_t;  // a cudaStream_t as an integer; 0 is the legacy default stream
using EventHandle = void*;            // a cudaEvent_t; nullptr when none

bool built_with_cuda();
// CUDART_VERSION the extension was compiled against (e.g. 13000), 0 without CUDA.
int cuda_runtime_version_built();
// True when a CUDA driver and at least one device can be used now. A CUDA build on a machine
// without a driver (CI) answers false and the cache falls back to plain host memory.
bool cuda_usable();
// Why cuda_usable() is false ("" when it is true).
std::string cuda_unusable_reason();

// Page-locked host memory; portable across devices. Returns nullptr when the allocation fails.
void* pinned_alloc(std::size_t nbytes);
void pinned_free(void* ptr);

EventHandle event_create(int device);
void event_destroy(EventHandle event);
void event_record(EventHandle event, StreamHandle stream, int device);
void stream_wait_event(StreamHandle stream, EventHandle event, int device);
bool event_done(EventHandle event);
void event_synchronize(EventHandle event);

void memcpy_device_to_host_async(void* dst, const void* src, std::size_t nbytes,
                                 StreamHandle stream, int device);
void memcpy_host_to_device_async(void* dst, const void* src, std::size_t nbytes,
                                 StreamHandle stream, int device);

}  // namespace cachekern
