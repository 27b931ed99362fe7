// Python bindings of cachekern._C. The module does not link libtorch: tensors cross as raw data
// pointers and streams as integer handles, so one build serves any installed torch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cache_engine.h"
#include "cuda_api.h"

namespace py = pybind11;
using cachekern::CacheEngine;

namespace {

py::dict stats_dict(const cachekern::EngineStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["spills"] = s.spills;
  d["prefetches"] = s.prefetches;
  d["bytes_device_to_host"] = s.bytes_device_to_host;
  d["bytes_host_to_device"] = s.bytes_host_to_device;
  d["device_bytes"] = s.device_bytes;
  d["peak_device_bytes"] = s.peak_device_bytes;
  d["host_bytes"] = s.host_bytes;
  d["host_reserved_bytes"] = s.host_reserved_bytes;
  d["host_chunk_allocations"] = s.host_chunk_allocations;
  d["entries"] = s.entries;
  d["device_entries"] = s.device_entries;
  d["host_entries"] = s.host_entries;
  d["host_waits"] = s.host_waits;
  d["pinned"] = s.pinned;
  return d;
}

py::dict build_info() {
  py::dict d;
  d["cuda"] = cachekern::built_with_cuda();
  d["cuda_runtime_version"] = cachekern::cuda_runtime_version_built();
  d["cuda_usable"] = cachekern::cuda_usable();
  d["cuda_unusable_reason"] = cachekern::cuda_unusable_reason();
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cachekern native block-cache engine (pinned host pool, async tier copies)";
  // Registered under RuntimeError; the Python layer re-raises it as cachekern.CapacityError (a
  // MemoryError). A C-level subclass of MemoryError is avoided on purpose: MemoryError's
  // allocation path is special-cased in CPython and a crash was seen raising one on Python 3.12.
  py::register_exception<cachekern::CapacityError>(m, "CapacityError", PyExc_RuntimeError);
  m.def("build_info", &build_info, "How this extension was built and whether CUDA is usable now.");

  // Copies and event waits can take long (synchronous memcpy of GBs without CUDA): release the
  // GIL so another Python thread keeps running; the engine's own mutex guards its state.
  using release_gil = py::call_guard<py::gil_scoped_release>;
  py::class_<CacheEngine>(m, "CacheEngine")
      .def(py::init<std::int64_t, std::int64_t>(), py::arg("device_budget"),
           py::arg("host_budget"))
      .def("insert", &CacheEngine::insert, py::arg("id"), py::arg("nbytes"), py::arg("device"))
      .def("make_room", &CacheEngine::make_room, py::arg("nbytes"), py::arg("exclude"))
      .def("spill", &CacheEngine::spill, py::arg("id"), py::arg("src"), py::arg("caller_stream"),
           py::arg("side_stream"), release_gil())
      .def("fetch", &CacheEngine::fetch, py::arg("id"), py::arg("dst"), py::arg("caller_stream"),
           py::arg("side_stream"), py::arg("keep"), py::arg("wait"), py::arg("is_prefetch"),
           release_gil())
      .def("wait_ready", &CacheEngine::wait_ready, py::arg("id"), py::arg("caller_stream"))
      .def("touch", &CacheEngine::touch, py::arg("id"))
      .def("mark_dirty", &CacheEngine::mark_dirty, py::arg("id"), release_gil())
      .def("set_next_use", &CacheEngine::set_next_use, py::arg("id"), py::arg("position"))
      .def("on_device", &CacheEngine::on_device, py::arg("id"))
      .def("contains", &CacheEngine::contains, py::arg("id"))
      .def("remove", &CacheEngine::remove, py::arg("id"), release_gil())
      .def("clear", &CacheEngine::clear, release_gil())
      .def("stats", [](const CacheEngine& e) { return stats_dict(e.stats()); })
      .def_property_readonly("pinned", [](const CacheEngine& e) { return e.stats().pinned; })
      .def_readonly_static("UNPLANNED", &CacheEngine::kUnplanned);
}
