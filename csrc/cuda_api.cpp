// Implementation of cuda_api.h. With CACHEKERN_WITH_CUDA the CUDA runtime is linked statically
// (libcudart_static), so the module loads on machines without libcudart.so and, without a
// driver, cuda_usable() simply answers false.
#include "cuda_api.h"

#include <stdexcept>
#include <string>

#ifdef CACHEKERN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace cachekern {

#ifdef CACHEKERN_WITH_CUDA

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("cachekern: ") + what + " failed: " +
                             cudaGetErrorString(status));
  }
}

// Runs on `device` and restores the caller's current device afterwards, so the cache never
// changes which device torch's code sees as current.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
    switched_ = device != previous_;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

cudaStream_t as_stream(StreamHandle stream) { return reinterpret_cast<cudaStream_t>(stream); }
cudaEvent_t as_event(EventHandle event) { return static_cast<cudaEvent_t>(event); }

}  // namespace

bool built_with_cuda() { return true; }
int cuda_runtime_version_built() { return CUDART_VERSION; }

std::string cuda_unusable_reason() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error state so later runtime calls start clean
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
  }
  if (count == 0) return "no CUDA device";
  return "";
}

bool cuda_usable() {
  static const bool usable = cuda_unusable_reason().empty();
  return usable;
}

void* pinned_alloc(std::size_t nbytes) {
  void* ptr = nullptr;
  if (cudaHostAlloc(&ptr, nbytes, cudaHostAllocPortable) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return ptr;
}

void pinned_free(void* ptr) { check(cudaFreeHost(ptr), "cudaFreeHost"); }

EventHandle event_create(int device) {
  DeviceGuard guard(device);
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  return event;
}

void event_destroy(EventHandle event) {
  if (event != nullptr) cudaEventDestroy(as_event(event));
}

void event_record(EventHandle event, StreamHandle stream, int device) {
  DeviceGuard guard(device);
  check(cudaEventRecord(as_event(event), as_stream(stream)), "cudaEventRecord");
}

void stream_wait_event(StreamHandle stream, EventHandle event, int device) {
  DeviceGuard guard(device);
  check(cudaStreamWaitEvent(as_stream(stream), as_event(event), 0), "cudaStreamWaitEvent");
}

bool event_done(EventHandle event) {
  cudaError_t status = cudaEventQuery(as_event(event));
  if (status == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(status, "cudaEventQuery");
  return true;
}

void event_synchronize(EventHandle event) {
  check(cudaEventSynchronize(as_event(event)), "cudaEventSynchronize");
}

void memcpy_device_to_host_async(void* dst, const void* src, std::size_t nbytes,
                                 StreamHandle stream, int device) {
  DeviceGuard guard(device);
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, as_stream(stream)),
        "cudaMemcpyAsync (device to host)");
}

void memcpy_host_to_device_async(void* dst, const void* src, std::size_t nbytes,
                                 StreamHandle stream, int device) {
  DeviceGuard guard(device);
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, as_stream(stream)),
        "cudaMemcpyAsync (host to device)");
}

#else  // built without a CUDA toolkit

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string("cachekern: ") + what +
                           " needs CUDA, but this build of cachekern._C has no CUDA support "
                           "(rebuild with a CUDA toolkit on PATH or CUDA_HOME set)");
}
}  // namespace

bool built_with_cuda() { return false; }
int cuda_runtime_version_built() { return 0; }
bool cuda_usable() { return false; }
std::string cuda_unusable_reason() { return "built without CUDA"; }
void* pinned_alloc(std::size_t) { return nullptr; }
void pinned_free(void*) { no_cuda("pinned_free"); }
EventHandle event_create(int) { no_cuda("event_create"); }
void event_destroy(EventHandle) {}
void event_record(EventHandle, StreamHandle, int) { no_cuda("event_record"); }
void stream_wait_event(StreamHandle, EventHandle, int) { no_cuda("stream_wait_event"); }
bool event_done(EventHandle) { return true; }
void event_synchronize(EventHandle) {}
void memcpy_device_to_host_async(void*, const void*, std::size_t, StreamHandle, int) {
  no_cuda("device-to-host copy");
}
void memcpy_host_to_device_async(void*, const void*, std::size_t, StreamHandle, int) {
  no_cuda("host-to-device copy");
}

#endif

}  // namespace cachekern
