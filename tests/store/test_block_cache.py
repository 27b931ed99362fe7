"""BlockCache on both engines, on the CPU (tier logic with small budgets) and on a GPU."""

import threading
import warnings

import pytest
import torch

import cachekern
from cachekern import BlockCache, CapacityError
from cachekern.store import _native
from cachekern.store import block_cache as block_cache_module

ENGINES = [
    pytest.param("native", marks=pytest.mark.skipif(_native.native is None,
                                                      reason="cachekern.store._C not loaded")),
    "python",
]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def nbytes(t):
    return t.numel() * t.element_size()


def random_tensor(shape, dtype, device):
    """Random, never all-zero data of any dtype (zeros would hide unwritten memory)."""
    if dtype == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randint(-100, 100, shape, device=device).to(dtype)


def assert_bitwise_equal(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    assert torch.equal(a.reshape(-1).view(torch.uint8) if a.numel() else a,
                       b.reshape(-1).view(torch.uint8) if b.numel() else b)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("budget", [None, 0, 3000])
def test_round_trip_is_bitwise_for_any_dtype_and_shape(engine, device, budget):
    cases = [
        ((3, 77, 40), torch.float32), ((5, 33), torch.float16), ((2, 4097), torch.bfloat16),
        ((7, 3), torch.int8), ((11,), torch.bool), ((4, 6), torch.complex64),
        ((3,), torch.int64), ((), torch.float32), ((0, 5), torch.float32), ((2, 0, 3), torch.int8),
    ]
    cache = BlockCache(device_budget_bytes=budget, engine=engine)
    originals = {}
    for i, (shape, dtype) in enumerate(cases):
        t = random_tensor(shape, dtype, device)
        originals[(i, "cond")] = t.clone()
        cache.put((i, "cond"), t)
    for _ in range(2):  # a second round reads entries that went host -> device -> host again
        for key, expected in originals.items():
            assert_bitwise_equal(cache.get(key), expected)
    assert len(cache) == len(cases)
    stats = cache.stats()
    if budget is not None:
        assert stats["spills"] > 0
        assert stats["device_bytes"] <= budget
    else:
        assert stats["spills"] == 0 and stats["misses"] == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input_is_stored_contiguous(engine, device):
    base = random_tensor((37, 53), torch.float16, device)
    view = base.t()[3:, ::2]
    assert not view.is_contiguous()
    cache = BlockCache(device_budget_bytes=0, engine=engine)
    cache.put("a", view)
    out = cache.get("a")
    assert out.is_contiguous()
    assert torch.equal(out, view)


@pytest.mark.parametrize("engine", ENGINES)
def test_least_recently_used_entry_spills_first(engine):
    a, b, c = (random_tensor((64,), torch.float32, "cpu") for _ in range(3))
    cache = BlockCache(device_budget_bytes=2 * nbytes(a), engine=engine)
    cache.put("a", a)
    cache.put("b", b)
    cache.get("a")            # b is now the least recently used
    cache.put("c", c)         # over budget by one entry: b leaves
    s = cache.stats()
    assert (s["spills"], s["device_entries"], s["host_entries"]) == (1, 2, 1)
    assert s["hits"] == 1 and s["misses"] == 0
    assert torch.equal(cache.get("b"), b)  # a miss; brings b back, spills a (now LRU)
    s = cache.stats()
    assert (s["misses"], s["spills"], s["bytes_host_to_device"]) == (1, 2, nbytes(b))
    assert torch.equal(cache.get("c"), c)
    assert cache.stats()["hits"] == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_planned_order_beats_recency(engine):
    tensors = {k: random_tensor((32,), torch.float32, "cpu") for k in "abc"}
    cache = BlockCache(device_budget_bytes=2 * nbytes(tensors["a"]), engine=engine)
    cache.put("a", tensors["a"])
    cache.put("b", tensors["b"])
    cache.plan(["b", "a"])    # a is needed after b; without a plan a (older) would leave anyway
    cache.get("a")            # a becomes most recent, but it is still planned after b
    cache.put("c", tensors["c"])
    s = cache.stats()
    assert s["host_entries"] == 1
    # c is unplanned (= never needed): it would leave first were it not the entry being put,
    # so among a and b the one planned later, a, leaves despite being most recently used.
    assert cache.get("b") is not None and cache.stats()["misses"] == 0
    assert torch.equal(cache.get("a"), tensors["a"])
    assert cache.stats()["misses"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_entry_larger_than_budget_lives_on_host(engine):
    big = random_tensor((1000,), torch.float32, "cpu")
    small = random_tensor((10,), torch.float32, "cpu")
    cache = BlockCache(device_budget_bytes=nbytes(big) - 4, engine=engine)
    cache.put("small", small)
    cache.put("big", big)
    s = cache.stats()
    assert s["device_entries"] == 1 and s["host_entries"] == 1  # small was not pushed out
    for _ in range(2):
        assert torch.equal(cache.get("big"), big)
    assert cache.stats()["host_entries"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_clean_host_copy_is_not_copied_again(engine):
    a, b = (random_tensor((256,), torch.float32, "cpu") for _ in range(2))
    cache = BlockCache(device_budget_bytes=nbytes(a), engine=engine)
    cache.put("a", a)
    cache.put("b", b)                       # a spills: one copy out
    for _ in range(3):
        cache.get("a")                      # a in, b out (b's first copy)
        cache.get("b")                      # b in, a out: a's host copy is still clean
    s = cache.stats()
    assert s["bytes_device_to_host"] == 2 * nbytes(a)
    assert s["spills"] == 7


@pytest.mark.parametrize("engine", ENGINES)
def test_in_place_write_after_get_is_copied_on_next_spill(engine):
    a, b = (random_tensor((128,), torch.float32, "cpu") for _ in range(2))
    cache = BlockCache(device_budget_bytes=nbytes(a), engine=engine)
    cache.put("a", a)
    cache.put("b", b)
    got = cache.get("a")                    # a back on device, clean host copy kept
    got.mul_(3.0)
    expected = got.clone()
    cache.get("b")                          # a must be copied out again, not restored stale
    assert torch.equal(cache.get("a"), expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_put_replaces_and_evict_removes(engine):
    cache = BlockCache(device_budget_bytes=0, engine=engine)
    first, second = (random_tensor((9,), torch.float32, "cpu") for _ in range(2))
    cache.put(("block", 3), first)
    cache.put(("block", 3), second)
    assert len(cache) == 1 and torch.equal(cache.get(("block", 3)), second)
    assert ("block", 3) in cache and ("block", 4) not in cache and [1] not in cache
    cache.evict(("block", 3))
    assert len(cache) == 0 and cache.stats()["host_bytes"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_host_budget_exhausted_names_the_sizes(engine):
    t = random_tensor((100,), torch.float32, "cpu")
    cache = BlockCache(device_budget_bytes=nbytes(t), host_budget_bytes=nbytes(t) // 2,
                       engine=engine)
    cache.put("a", t)
    with pytest.raises(CapacityError, match=r"400 bytes.*device budget 400.*host budget 200"):
        cache.put("b", t.clone())
    assert isinstance(CapacityError("x"), MemoryError)
    assert "b" not in cache and torch.equal(cache.get("a"), t)


@pytest.mark.parametrize("engine", ENGINES)
def test_clear_releases_everything(engine):
    cache = BlockCache(device_budget_bytes=100, engine=engine)
    for i in range(5):
        cache.put(i, random_tensor((40,), torch.float32, "cpu"))
    cache.clear()
    s = cache.stats()
    assert len(cache) == 0 and s["device_bytes"] == 0 and s["host_bytes"] == 0
    assert s["host_reserved_bytes"] == 0


@pytest.mark.skipif(_native.native is None, reason="cachekern.store._C not loaded")
def test_host_pool_allocates_once_in_steady_state():
    cache = BlockCache(device_budget_bytes=2 * 4096 * 4, engine="native")
    tensors = [random_tensor((4096,), torch.float32, "cpu") for _ in range(6)]
    for step in range(10):
        for i, t in enumerate(tensors):
            cache.put(i, t if step % 2 else t.clone())   # fresh tensors force fresh host copies
        for i in range(len(tensors)):
            cache.get((i + 3) % len(tensors))
        if step == 1:
            allocations = cache.stats()["host_chunk_allocations"]
    assert allocations >= 1
    assert cache.stats()["host_chunk_allocations"] == allocations


@pytest.mark.parametrize("engine", ENGINES)
def test_two_threads_put_and_get_at_once(engine):
    cache = BlockCache(device_budget_bytes=6 * 1024 * 4, engine=engine)
    errors = []

    def worker(name):
        try:
            gen = torch.Generator().manual_seed(hash(name) % 1000)
            for i in range(150):
                t = torch.randn(1024, generator=gen)
                cache.put((name, i % 7), t)
                got = cache.get((name, i % 7))
                if not torch.equal(got, t):
                    errors.append(f"{name} step {i}: wrong data")
        except Exception as exc:  # reported below, a thread cannot fail the test itself
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("cond", "uncond")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert cache.stats()["spills"] > 0


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="device_budget_bytes must be None .* or an int >= 0"):
        BlockCache(device_budget_bytes=-1)
    with pytest.raises(ValueError, match="host_budget_bytes"):
        BlockCache(host_budget_bytes=1.5)
    with pytest.raises(ValueError, match="engine must be"):
        BlockCache(engine="gpu")
    cache = BlockCache(engine="python")
    with pytest.raises(TypeError, match="key must be hashable"):
        cache.put(["block", 0], torch.ones(2))
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        cache.put("a", [1.0, 2.0])
    with pytest.raises(KeyError, match="BlockCache.get: no entry for key 'missing'"):
        cache.get("missing")
    with pytest.raises(KeyError, match="BlockCache.evict"):
        cache.evict("missing")
    meta_cache = BlockCache(device="meta", engine="python")
    with pytest.raises(ValueError, match="tensor is on cpu, but this cache holds tensors of meta"):
        meta_cache.put("a", torch.ones(3))


def test_python_engine_is_used_with_one_warning_when_native_is_missing(monkeypatch):
    monkeypatch.setattr(_native, "native", None)
    monkeypatch.setattr(_native, "load_error", "ImportError: simulated")
    monkeypatch.setattr(block_cache_module, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="simulated"):
        first = BlockCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = BlockCache()
    assert first.engine_kind == second.engine_kind == "python"
    with pytest.raises(RuntimeError, match="engine='native' but cachekern.store._C could not be loaded"):
        BlockCache(engine="native")


# -- GPU only: streams, pinned memory, prefetch ------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("engine", ENGINES)
def test_gpu_spill_uses_pinned_memory_and_prefetch_overlaps(engine):
    cache = BlockCache(device_budget_bytes=2 * (1 << 20) * 4, engine=engine)
    tensors = [torch.randn(1 << 20, device="cuda") for _ in range(4)]
    for i, t in enumerate(tensors):
        cache.put(i, t)
    assert cache.stats()["pinned"] is True
    cache.prefetch(0)
    assert cache.stats()["prefetches"] == 1
    for i, t in enumerate(tensors):
        assert torch.equal(cache.get(i), t)


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ENGINES)
def test_gpu_ordering_follows_the_callers_stream(engine):
    """Data produced on a user stream is spilled and restored in order without any sync."""
    stream = torch.cuda.Stream()
    cache = BlockCache(device_budget_bytes=0, engine=engine)
    with torch.cuda.stream(stream):
        x = torch.randn(1 << 22, device="cuda")
        for _ in range(20):               # keep the stream busy so a missing wait would show
            x = x * 1.0001 + 0.001
        expected = x.clone()
        cache.put("x", x)
        del x
        out = cache.get("x")
        assert torch.equal(out, expected)
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_gpu_build_reports_cuda():
    info = cachekern.build_info()
    if info["native_loaded"] and info["built_with_cuda"]:
        assert info["cuda_usable"] and info["pinned_host_memory"]
