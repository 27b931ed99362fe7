"""TeaCache under diffusers' context parallelism (Ulysses over the sequence), on CPU with the gloo
backend and several processes: every rank takes the same decisions, those of a one-process run;
the outputs equal the one-process run's within tolerance; a NaN one rank sees makes every rank
compute. Two tiny real models: FLUX (its plan splits the tokens before the stack) and Wan (its
plan splits them at block 0's input)."""

import contextlib
import datetime
import os
import socket

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

WORLD = 2          # ranks of the Block Caching test
STEPS = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(name):
    """(model, inputs) of a tiny model whose token counts (and, for Ulysses, heads) split evenly
    over the ranks: two for "flux" and "wan", four for "wan4"."""
    from tiny_models import flux, wan

    if name == "wan":
        model, inputs, scale = wan()
        return model, inputs(1), scale
    if name == "wan4":
        torch.manual_seed(0)
        model = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
            rope_max_seq_len=32).eval()
        _, inputs, scale = wan()
        return model, inputs(1), scale
    model, _, scale = flux()
    g = torch.Generator().manual_seed(1)
    return model, dict(hidden_states=torch.randn(2, 16, 8, generator=g),
                       encoder_hidden_states=torch.randn(2, 6, 32, generator=g),
                       pooled_projections=torch.randn(2, 16, generator=g),
                       img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(6, 3)), scale


def generate(model, inp, scale, policy=None, nan_at=None):
    """(outputs of every step, decisions) of one generation, patched with `policy` if given;
    `nan_at`: the call at which this rank's indicator sums become NaN."""
    import cachekern
    from tiny_models import sample_family

    if policy is None:
        return sample_family(model, inp, steps=STEPS, timestep_scale=scale), None
    with cachekern.patched(model, policy) as handle:
        if nan_at is not None:
            sums, calls = handle.runtime._sums, []

            def poisoned(*args):
                out = sums(*args)
                calls.append(None)
                if out is not None and len(calls) - 1 == nan_at:
                    out = (torch.full_like(out[0], float("nan")), out[1])
                return out
            handle.runtime._sums = poisoned
        out = sample_family(model, inp, steps=STEPS, timestep_scale=scale)
        return out, [r["computed"] for r in handle.history]


def errors(model):
    """The messages of what context parallelism refuses: the published one-GPU arithmetic, and
    CUDA graphs (whose capture would hold the decision's collective)."""
    import cachekern
    from cachekern import TeaCache

    found = []
    for policy in (TeaCache(parity=True, num_inference_steps=STEPS),
                   TeaCache(cuda_graphs=True)):
        try:
            with cachekern.patched(model, policy), torch.no_grad():
                model(**family_inputs(model), timestep=torch.ones(2), return_dict=False)
        except ValueError as error:
            found.append(str(error))
    return found


def family_inputs(model):
    return family("wan" if type(model).__name__.startswith("Wan") else "flux")[1]  # same shapes


@contextlib.contextmanager
def process_group(rank, port, world):
    """A worker's gloo group. On success every rank meets the others before it tears the group
    down, then ends without the interpreter's teardown; an exception propagates (the test
    fails) after the group is destroyed.

    CI once saw rank 0 abort (SIGABRT, "terminate called without an active exception"), for
    two reasons this answers: diffusers' functional all-gathers are waited lazily, so a peer
    could close its connection under them (the barrier); gloo's leftover threads can abort the
    process at interpreter teardown, after everything the test checks is saved (os._exit)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # Ranks that decided differently would wait for each other's collectives: fail instead.
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))
    try:
        yield
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    os._exit(0)


def worker(rank, port, name, folder, world):
    with process_group(rank, port, world):
        import cachekern
        from cachekern import TeaCache

        model, inp, scale = family(name)
        # a threshold that skips some steps of this model's six (its indicator's change)
        policy = TeaCache(threshold=0.8 if name == "wan4" else 0.3, coefficients=None,
                          num_inference_steps=STEPS, forecast_order=1)
        skip_all = TeaCache(threshold=1e9, coefficients=None, num_inference_steps=STEPS)
        results = dict(one=generate(model, inp, scale, policy),
                       one_uncached=generate(model, inp, scale)[0])
        # diffusers 0.42 builds its device mesh on an accelerator; on a CPU-only machine one
        # "device" stands for it.
        torch.accelerator.device_count = lambda: 1
        model.enable_parallelism(config=diffusers.ContextParallelConfig(ulysses_degree=world))
        results["uncached"] = generate(model, inp, scale)[0]
        results["cached"] = generate(model, inp, scale, policy)
        results["skip_all"] = generate(model, inp, scale, skip_all)[1]
        results["nan"] = generate(model, inp, scale, skip_all, nan_at=3 if rank == 1 else None)[1]
        results["errors"] = errors(model)
        try:
            cachekern.search_schedule(model, lambda: generate(model, inp, scale)[0], 0.5)
        except RuntimeError as error:
            results["errors"].append(str(error))
        torch.save(results, os.path.join(folder, f"{rank}.pt"))


@pytest.mark.parametrize("name, world", [("flux", 2), ("wan", 2), ("wan4", 4)])
def test_teacache_decides_alike_on_every_rank(name, world, tmp_path):
    torch.multiprocessing.spawn(worker, args=(free_port(), name, str(tmp_path), world),
                                nprocs=world)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(world)]
    one_out, one_decisions = ranks[0]["one"]
    assert 1 < one_decisions.count(True) < STEPS          # the setting skips some steps
    for results in ranks:
        torch.testing.assert_close(results["uncached"], results["one_uncached"],
                                   rtol=1e-4, atol=1e-5)
        out, decisions = results["cached"]
        assert decisions == one_decisions
        torch.testing.assert_close(out, one_out, rtol=1e-4, atol=1e-5)
        assert results["skip_all"] == [True] + [False] * (STEPS - 2) + [True]
        # one rank saw a NaN at the fourth call: every rank computed it
        assert results["nan"] == [True, False, False, True, False, True]
        parity, graphs, search = results["errors"]
        assert "parity=True" in parity and "context parallelism" in parity
        assert "cuda_graphs=True" in graphs and "context parallelism" in graphs
        assert "search_schedule" in search and "context parallelism" in search


def block_caching_worker(rank, port, name, folder):
    with process_group(rank, port, WORLD):
        import cachekern
        from cachekern import BlockCaching

        model, inp, scale = family(name)

        def run():
            return generate(model, inp, scale)[0]

        def recorded():
            profile = cachekern.profile(model, run)
            cachekern.fit_scale_shift(profile, model, run, target_compute=0.5)
            schedule = profile.schedule(target_compute=0.5)
            return profile, profile.scale_shift_for(schedule, "fit")

        def cached(profile):
            with cachekern.patched(model, BlockCaching(profile, target_compute=0.5)) as handle:
                out = run()
                return out, handle.stats()["blocks_reused"]

        one_profile, one_fit = recorded()
        results = dict(one=cached(one_profile), one_change=one_profile.change, one_fit=one_fit)
        torch.accelerator.device_count = lambda: 1
        model.enable_parallelism(config=diffusers.ContextParallelConfig(ulysses_degree=WORLD))
        profile, fit = recorded()
        results.update(change=profile.change, fit=fit, cached=cached(profile),
                       cached_one_profile=cached(one_profile)[0])
        try:
            cachekern.train_scale_shift(profile, model, run, target_compute=0.5)
        except RuntimeError as error:
            results["train_error"] = str(error)
        torch.save(results, os.path.join(folder, f"{rank}.pt"))


@pytest.mark.parametrize("name", ["flux", "wan"])
def test_block_caching_profiles_fits_and_runs_on_every_rank(name, tmp_path):
    torch.multiprocessing.spawn(block_caching_worker, args=(free_port(), name, str(tmp_path)),
                                nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(WORLD)]
    one_out, one_reused = ranks[0]["one"]
    assert one_reused > 0
    for results in ranks:
        # recorded from every rank's slice: the one-process profile and fit
        torch.testing.assert_close(torch.tensor(results["change"]),
                                   torch.tensor(results["one_change"]), rtol=1e-4, atol=1e-6,
                                   equal_nan=True)
        assert results["fit"].keys() == results["one_fit"].keys()
        for cell, (scale, shift) in results["fit"].items():
            torch.testing.assert_close(scale, results["one_fit"][cell][0], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(shift, results["one_fit"][cell][1], rtol=1e-3, atol=1e-4)
        out, reused = results["cached"]
        assert reused == one_reused
        torch.testing.assert_close(out, one_out, rtol=1e-4, atol=1e-5)
        # a profile recorded on one process serves the ranks as well
        torch.testing.assert_close(results["cached_one_profile"], one_out, rtol=1e-4, atol=1e-5)
        assert "context parallelism" in results["train_error"]
