"""cachekern.calibration: one uncached pass records what TeaCache's and Block Caching's own
calibrations record in a pass each (the same profile, residuals, changes and relative block
FLOPs), on tiny real diffusers models: a joint-stream DiT (FLUX, whose TeaCache indicator runs
part of block 0 outside its call), a UNet with its ResNet blocks, Wan, and two CFG branches."""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from cachekern.block_caching import profile  # noqa: E402
from cachekern.calibration import record_both  # noqa: E402
from cachekern.models.blocks import cached_units, is_unet  # noqa: E402
from cachekern.models.flops import counting_unit_flops  # noqa: E402
from cachekern.teacache.schedule_search import record_residuals_and_changes  # noqa: E402
from tiny_models import call, flux, make_inputs, sample_family, tiny_flux, unet, wan  # noqa: E402


def separate(model, run, seeds, resnets):
    """What the two calibrations record, each in its own pass over the seeds."""
    order = iter(seeds)
    records, changes = record_residuals_and_changes(model, lambda: run(next(order)),
                                                    len(seeds), "test")
    order = iter(seeds)
    with counting_unit_flops(model, cached_units(model, resnets)) as weights:
        prof = profile(model, lambda: run(next(order)), runs=len(seeds), resnets=resnets)
    return records, changes, prof, weights


def assert_same(joint, records, changes, prof, weights):
    assert joint.profile.units == prof.units and joint.profile.runs == prof.runs
    assert joint.profile.branches == prof.branches
    assert joint.profile.timesteps == pytest.approx(prof.timesteps)
    for mine, theirs in zip(joint.profile.change, prof.change):
        assert [math.isnan(c) for c in mine] == [math.isnan(c) for c in theirs]
        assert [c for c in mine if not math.isnan(c)] == \
            pytest.approx([c for c in theirs if not math.isnan(c)], rel=1e-5)
    # FLOPs of a replayed call per branch: the same shares of the blocks' work
    assert [w / sum(joint.weights) for w in joint.weights] == \
        pytest.approx([w / sum(weights) for w in weights], rel=1e-9)
    # the block observers change nothing the model computes: TeaCache's records bit for bit
    assert changes.pairs == joint.changes.pairs
    assert [r[:4] for r in records] == [r[:4] for r in joint.records]
    for (*_, mine), (*_, theirs) in zip(joint.records, records):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("family", [flux, unet, wan], ids=lambda f: f.__name__)
def test_one_pass_records_what_the_two_calibrations_record(family):
    model, make, scale = family()

    def run(seed):
        return sample_family(model, make(seed), timestep_scale=scale)

    resnets = is_unet(model)
    joint = record_both(model, run, [3, 4], resnets=resnets)
    assert joint.generations == 2              # one pass over the two seeds
    assert_same(joint, *separate(model, run, [3, 4], resnets))


def test_two_cfg_branches_are_recorded_apart():
    model = tiny_flux()
    steps = 5

    def run(seed):
        cond, uncond = make_inputs(seed), make_inputs(seed + 100)
        latents = cond["x"].clone()
        with torch.no_grad():
            for t in torch.linspace(1.0, 0.05, steps):
                with model.cache_context("cond"):
                    c = call(model, cond, latents, t)
                with model.cache_context("uncond"):
                    u = call(model, uncond, latents, t)
                latents = latents - (u + 3.0 * (c - u)) / steps
        return latents

    joint = record_both(model, run, [5])
    assert joint.profile.branches == ["cond", "uncond"] and joint.profile.steps == steps
    assert_same(joint, *separate(model, run, [5], False))


def test_bad_arguments_get_clear_errors():
    model, make, scale = flux()
    with pytest.raises(TypeError, match="run: expected a callable run"):
        record_both(model, "not callable", [1])
    with pytest.raises(ValueError, match="runs: expected a positive int"):
        record_both(model, lambda seed: sample_family(model, make(seed)), [])


def test_blocks_outside_teacaches_stack_take_a_pass_of_their_own(monkeypatch):
    from cachekern.teacache.handle import TeaCacheHandle

    model, make, scale = flux()

    def run(seed):
        return sample_family(model, make(seed), timestep_scale=scale)

    # As for a block that runs before TeaCache's decision: no call in progress to attribute to.
    monkeypatch.setattr(TeaCacheHandle, "call_in_progress", lambda self: None)
    joint = record_both(model, run, [3])
    assert joint.generations == 2
    monkeypatch.undo()
    assert_same(joint, *separate(model, run, [3], False))
