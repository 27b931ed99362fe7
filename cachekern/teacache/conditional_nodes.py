"""Conditional nodes in a CUDA graph captured by torch: a body that runs on replay only when a
bool flag on the device is set (CUDA >= 12.4 drivers).

torch exposes this (``CUDAGraph.begin_capture_to_if_node``) only from 2.12 on; for older torch
this module does what it does through the CUDA driver API, loaded with ctypes (no build step,
no dependency beyond the driver every CUDA torch already needs):

1. a one-thread kernel, launched into the graph being captured, copies the flag into the
   conditional handle (``cudaGraphSetConditional``; shipped here as PTX, JIT-compiled by the
   driver once);
2. a conditional IF node is added after it, and the capturing stream is made to depend on it;
3. the body is captured into the node's child graph from a second stream, whose allocations
   torch's caching allocator is told to take from the graph's own memory pool, as the parent
   capture's are; afterwards the parent's allocations go back to that pool.
"""

import ctypes
import functools

import torch

_SET_CONDITIONAL_PTX = b"""
.version 8.4
.target sm_75
.address_size 64

.extern .func cudaGraphSetConditional
(
    .param .b64 handle,
    .param .b32 value
)
;

.visible .entry cachekern_set_conditional(
    .param .u64 param_handle,
    .param .u64 param_flag
)
{
    .reg .b32 %r<2>;
    .reg .b64 %rd<4>;

    ld.param.u64 %rd1, [param_handle];
    ld.param.u64 %rd2, [param_flag];
    cvta.to.global.u64 %rd3, %rd2;
    ld.global.u8 %r1, [%rd3];
    {
    .param .b64 param0;
    st.param.b64 [param0+0], %rd1;
    .param .b32 param1;
    st.param.b32 [param1+0], %r1;
    call.uni cudaGraphSetConditional, (param0, param1);
    }
    ret;
}
\0"""

_NODE_TYPE_CONDITIONAL = 13       # CU_GRAPH_NODE_TYPE_CONDITIONAL
_COND_TYPE_IF = 0                 # CU_GRAPH_COND_TYPE_IF
_SET_CAPTURE_DEPENDENCIES = 1     # CU_STREAM_SET_CAPTURE_DEPENDENCIES
_CAPTURE_STATUS_ACTIVE = 1        # CU_STREAM_CAPTURE_STATUS_ACTIVE
_CAPTURE_MODE_RELAXED = 2         # CU_STREAM_CAPTURE_MODE_RELAXED

_p = ctypes.c_void_p


class _ConditionalParams(ctypes.Structure):     # CUDA_CONDITIONAL_NODE_PARAMS
    _fields_ = [("handle", ctypes.c_uint64), ("type", ctypes.c_int), ("size", ctypes.c_uint),
                ("graph_out", ctypes.POINTER(_p)), ("ctx", _p)]


class _NodeParams(ctypes.Structure):            # CUgraphNodeParams (256 bytes)
    _fields_ = [("type", ctypes.c_int), ("reserved0", ctypes.c_int * 3),
                ("conditional", _ConditionalParams),
                ("reserved1", ctypes.c_byte * (29 * 8 - ctypes.sizeof(_ConditionalParams))),
                ("reserved2", ctypes.c_longlong)]


class _Driver:
    """The few driver entry points needed, with errors that name the call."""

    def __init__(self):
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as error:
            raise RuntimeError(f"cachekern: CUDA graph conditional nodes need the CUDA driver "
                               f"library (libcuda.so.1): {error}") from None
        self.lib = lib
        names = ("cuStreamGetCaptureInfo_v3", "cuGraphConditionalHandleCreate",
                 "cuGraphAddNode_v2", "cuStreamUpdateCaptureDependencies_v2",
                 "cuStreamBeginCaptureToGraph", "cuStreamEndCapture", "cuCtxGetCurrent",
                 "cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel", "cuGetErrorString")
        missing = [name for name in names if not hasattr(lib, name)]
        if missing:
            raise RuntimeError(f"cachekern: CUDA graph conditional nodes need a driver for CUDA "
                               f">= 12.4; this one lacks {', '.join(missing)}")
        for name in names:
            getattr(lib, name).restype = ctypes.c_int
        self._kernel = {}

    def __call__(self, name, *args):
        result = getattr(self.lib, name)(*args)
        if result != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(text))
            raise RuntimeError(f"cachekern: {name} failed: "
                               f"{(text.value or b'').decode()} ({result})")

    def set_conditional_kernel(self, device):
        """The flag-to-handle kernel, loaded in the device's context."""
        if device not in self._kernel:
            module, function = _p(), _p()
            self("cuModuleLoadData", ctypes.byref(module), _SET_CONDITIONAL_PTX)
            self("cuModuleGetFunction", ctypes.byref(function), module,
                 b"cachekern_set_conditional")
            self._kernel[device] = function
        return self._kernel[device]


@functools.lru_cache(maxsize=None)
def _driver():
    return _Driver()


def _capture_info(driver, stream):
    status, graph = ctypes.c_int(), _p()
    deps, edges, count = _p(), _p(), ctypes.c_size_t()
    driver("cuStreamGetCaptureInfo_v3", _p(stream), ctypes.byref(status), None,
           ctypes.byref(graph), ctypes.byref(deps), ctypes.byref(edges), ctypes.byref(count))
    if status.value != _CAPTURE_STATUS_ACTIVE:
        raise RuntimeError("cachekern: a conditional node can only be added while the current "
                           "stream captures a CUDA graph")
    return graph, deps, edges, count


def run_if(flag: torch.Tensor, body, pool):
    """Captures `body()` into an IF node of the graph the current stream is capturing, into
    memory pool `pool` (the capture's: torch.cuda.graph(..., pool=pool)); returns body's result.
    On replay the body runs only when the bool scalar `flag` is true at that point."""
    if flag.dtype != torch.bool or flag.numel() != 1 or flag.device.type != "cuda":
        raise ValueError(f"run_if: flag must be a bool CUDA scalar, got {flag.dtype} "
                         f"{tuple(flag.shape)} on {flag.device}")
    native = getattr(torch._C, "_CUDAGraph", None)
    if hasattr(native, "begin_capture_to_if_node") and \
            hasattr(torch.cuda.CUDAGraph, "get_currently_capturing_graph"):
        graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
        graph.begin_capture_to_if_node(flag)
        try:
            return body()
        finally:
            graph.end_capture_to_conditional_node()
    return _run_if_driver(flag, body, pool)


def _run_if_driver(flag, body, pool):
    driver = _driver()
    device = flag.device.index if flag.device.index is not None else \
        torch.cuda.current_device()
    parent = torch.cuda.current_stream()
    graph, _, _, _ = _capture_info(driver, parent.cuda_stream)

    ctx, handle = _p(), ctypes.c_uint64()
    driver("cuCtxGetCurrent", ctypes.byref(ctx))
    driver("cuGraphConditionalHandleCreate", ctypes.byref(handle), graph, ctx, 0, 0)
    kernel = driver.set_conditional_kernel(device)
    args = (ctypes.c_uint64(handle.value), ctypes.c_uint64(flag.data_ptr()))
    params = (_p * 2)(*(ctypes.cast(ctypes.pointer(a), _p) for a in args))
    driver("cuLaunchKernel", kernel, 1, 1, 1, 1, 1, 1, 0, _p(parent.cuda_stream), params, None)

    graph, deps, edges, count = _capture_info(driver, parent.cuda_stream)
    body_graph = _p()
    node_params = _NodeParams()
    node_params.type = _NODE_TYPE_CONDITIONAL
    node_params.conditional.handle = handle.value
    node_params.conditional.type = _COND_TYPE_IF
    node_params.conditional.size = 1
    node_params.conditional.graph_out = ctypes.pointer(body_graph)
    node_params.conditional.ctx = ctx
    node = _p()
    driver("cuGraphAddNode_v2", ctypes.byref(node), graph, deps, edges, count,
           ctypes.byref(node_params))
    body_graph = node_params.conditional.graph_out[0]
    driver("cuStreamUpdateCaptureDependencies_v2", _p(parent.cuda_stream), ctypes.byref(node),
           None, 1, _SET_CAPTURE_DEPENDENCIES)

    # The body's stream allocates from the graph's pool, as the parent capture did; torch
    # routes one filter per pool at a time, so the parent's is lifted meanwhile.
    child = body_stream(device)
    torch._C._cuda_endAllocateToPool(device, pool)
    try:
        with torch.cuda.stream(child):
            torch._C._cuda_beginAllocateCurrentStreamToPool(device, pool)
            driver("cuStreamBeginCaptureToGraph", _p(child.cuda_stream), _p(body_graph),
                   None, None, 0, _CAPTURE_MODE_RELAXED)
            try:
                return body()
            finally:
                ended = _p()
                driver("cuStreamEndCapture", _p(child.cuda_stream), ctypes.byref(ended))
                torch._C._cuda_endAllocateToPool(device, pool)
                # Each begin took a reference on the pool; the graph holds its own.
                torch._C._cuda_releasePool(device, pool)
    finally:
        torch._C._cuda_beginAllocateCurrentStreamToPool(device, pool)
        torch._C._cuda_releasePool(device, pool)


_BODY_STREAMS = {}


def body_stream(device) -> torch.cuda.Stream:
    """The stream conditional bodies are captured from, one per device (warm up on it what a
    body will run, so that libraries set it up outside the capture)."""
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _BODY_STREAMS:
        _BODY_STREAMS[index] = torch.cuda.Stream(index)
    return _BODY_STREAMS[index]
