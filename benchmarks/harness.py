"""What every benchmark script shares: the environment line, timers, the copy-bandwidth ceiling,
tables, a forward captured as a CUDA graph by hand, and the models it times (FLUX presets,
shared with the demo; Wan2.1-14B). Scripts import this module (and the libraries block_work,
quality_methods), never each other.

Run every script from the repository root: python -m benchmarks.<script> [...].
"""

import statistics
import time
import warnings

import torch

from cachekern.demo import PRESETS, build_model, make_inputs  # noqa: F401  (FLUX presets)


def environment() -> str:
    import triton

    if not torch.cuda.is_available():
        return f"CPU, torch {torch.__version__}, triton {triton.__version__}"
    props = torch.cuda.get_device_properties(0)
    return (f"GPU: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), triton {triton.__version__}")


def warm_up_gpu(seconds=2.0):
    """Runs matmuls until the clocks have left idle: the first measurements of a cold GPU are
    otherwise taken at a fraction of its clock."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a = (a @ a) * 1e-4
        torch.cuda.synchronize()


def median_us(fn, warmup_ms=50, rep_ms=300) -> float:
    """Median GPU time of fn in microseconds (CUDA events, L2 flushed before each run)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") * 1e3


def median_graph_us(fns, calls_per_graph=24, trials=15) -> float:
    """Median GPU time per call of the callables in `fns`, captured in one CUDA graph that calls
    them in turn and timed over its replays. A graph removes the host's launch overhead from the
    measurement (what is left is the kernels themselves), and cycling through several input
    sets larger than L2 together keeps each call reading from memory, not from the cache."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:   # compile and autotune outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_graph):
            fns[i % len(fns)]()
    graph.replay()
    times = []
    for _ in range(trials):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls_per_graph)
    return statistics.median(times)


def median_wall_us(fn, reps=15, warmup=3) -> float:
    """Median host time of fn followed by a device synchronize, in microseconds."""
    for _ in range(warmup):
        fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def wall_times(fn, passes):
    """(fn's last output, wall seconds of each of `passes` calls), each call between device
    synchronisations (none on a machine without CUDA)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times, out = [], None
    for _ in range(passes):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return out, times


def copy_bandwidth_gbs(nbytes=2 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + bytes written per second), the ceiling a
    memory-bound kernel is compared with."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    return 2 * nbytes / (us * 1e-6) / 1e9


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(text: str, out_path=None) -> None:
    """Prints a benchmark's report and, when asked, writes it to a file as well."""
    print(text)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text + "\n")


def syncs_per_call(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # Only the reports of a synchronising call (torch also warns, once, that the debug mode
    # is a prototype, and that warning mentions "synchronizing operations" too).
    return sum(str(w.message).startswith("called a synchronizing") for w in caught)


# -- FLUX calls -------------------------------------------------------------------------------
def forward_fn(model, inputs, sigma):
    t = torch.full((1,), sigma, device="cuda", dtype=inputs["latents"].dtype)

    def run():
        return model(hidden_states=inputs["latents"], timestep=t,
                     encoder_hidden_states=inputs["encoder_hidden_states"],
                     pooled_projections=inputs["pooled_projections"], img_ids=inputs["img_ids"],
                     txt_ids=inputs["txt_ids"], guidance=inputs["guidance"], return_dict=False)[0]
    return run


class UserGraph:
    """The unpatched forward as a user would capture it: static inputs, one graph (the
    baseline a graphed cache is measured against)."""

    def __init__(self, model, kwargs):
        self.static = {k: v.clone() if isinstance(v, torch.Tensor) else v
                       for k, v in kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(**self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = model(**self.static)[0]

    def __call__(self, **kwargs):
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                self.static[name].copy_(value)
        self.graph.replay()
        return self.output.clone()


def gpu_ms(fn, reps):
    """Median of `reps` calls, each timed with CUDA events around the call (host sync after)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


# -- WanTransformer3DModel at Wan2.1-T2V-14B's dimensions --------------------------------------
# diffusers' config of Wan-AI/Wan2.1-T2V-14B-Diffusers with random weights, and its inputs at a
# video size; "small" is a few-block stand-in that checks a script on the CPU.
WAN_CONFIGS = {
    "14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
    "small": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                  in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                  num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
}
# Latents [B, C, frames, height, width] (VAE: 4× in time, 8× in space), and text tokens.
WAN_SIZES = {
    "720p": dict(latents=(1, 16, 21, 90, 160), text_tokens=512),    # 1280×720, 81 frames
    "480p": dict(latents=(1, 16, 21, 60, 104), text_tokens=512),    # 832×480, 81 frames
    "small": dict(latents=(1, 4, 3, 8, 8), text_tokens=7),
}


def build_wan(config, device):
    """The model in bf16 on a GPU (fp32 on the CPU), made in that dtype directly: 14B parameters
    made in fp32 first would not fit beside their bf16 copy."""
    from diffusers import WanTransformer3DModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            torch.manual_seed(0)
            return WanTransformer3DModel(**WAN_CONFIGS[config]).eval()
    finally:
        torch.set_default_dtype(previous)


def wan_inputs(model, size, device, seed=1):
    """(latents, text embeddings) for `size`, in the model's dtype."""
    spec = WAN_SIZES[size]
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device).manual_seed(seed)
    latents = torch.randn(spec["latents"], generator=g, device=device, dtype=dtype)
    text = torch.randn(1, spec["text_tokens"], model.config.text_dim, generator=g, device=device,
                       dtype=dtype)
    return latents, text
