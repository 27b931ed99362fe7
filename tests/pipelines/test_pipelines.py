"""Real diffusers pipelines (tiny components, random weights), called as users call them and
patched with cachekern.patch(pipe, ...): CFG as each pipeline runs it, num_images_per_prompt > 1,
a second call with another step count, unpatch."""

import pytest
import torch

import cachekern

tiny_pipelines = pytest.importorskip("tiny_pipelines")

STEPS = 4


def generate(pipe, call, steps=STEPS, seed=0):
    """One call as a user makes it: two images (or videos) per prompt."""
    per_prompt = "num_videos_per_prompt" if "num_frames" in call else "num_images_per_prompt"
    return pipe(**call, num_inference_steps=steps, **{per_prompt: 2},
                generator=tiny_pipelines.seeded(seed), output_type="pt", return_dict=False)[0]


@pytest.fixture(scope="module", params=sorted(tiny_pipelines.TRANSFORMER_PIPELINES))
def transformer_pipeline(request):
    pipe, call = tiny_pipelines.TRANSFORMER_PIPELINES[request.param]()
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe, call


def steps_of(handle):
    """{branch: [(step, computed), ...]} from TeaCache's records, in call order."""
    out = {}
    for record in handle.history:
        out.setdefault(record["branch"], []).append((record["step"], record["computed"]))
    return out


def test_teacache_on_a_pipeline(transformer_pipeline):
    name, pipe, call = transformer_pipeline
    uncached = generate(pipe, call)
    # CogVideoXPipeline (diffusers 0.42) sets num_videos_per_prompt = 1 whatever it is given.
    assert uncached.shape[0] == (1 if name == "cogvideox" else 2)
    assert torch.isfinite(uncached).all()

    # Never skipping: bitwise the unpatched pipeline, at two step counts in a row.
    with cachekern.patched(pipe, cachekern.TeaCache(threshold=0.0)) as handle:
        assert torch.equal(generate(pipe, call), uncached)
        generate(pipe, call, steps=STEPS + 1)
        assert handle.stats()["skipped"] == 0

    # Skipping everything it may: the first and the last step of each generation still run,
    # the step count taken from the pipeline's own scheduler, per generation.
    with cachekern.patched(pipe, cachekern.TeaCache(threshold=1e9)) as handle:
        for steps in (STEPS, STEPS + 2):
            handle.reset()
            cached = generate(pipe, call, steps=steps)
            assert cached.shape == uncached.shape and torch.isfinite(cached).all()
            branches = steps_of(handle)
            # CFG as two calls (each in its cache_context), or batched into one
            expected_branches = 2 if name in ("flux", "wan", "hunyuan_video") else 1
            assert len(branches) == expected_branches, branches
            for records in branches.values():
                assert [s for s, _ in records] == list(range(steps))
                assert [c for _, c in records] == [True] + [False] * (steps - 2) + [True]

    # Unpatched: as before, bit for bit.
    assert torch.equal(generate(pipe, call), uncached)


@pytest.mark.parametrize("name", sorted(tiny_pipelines.UNET_PIPELINES))
def test_block_caching_on_a_unet_pipeline(name):
    pipe, call = tiny_pipelines.UNET_PIPELINES[name]()
    pipe.set_progress_bar_config(disable=True)
    uncached = generate(pipe, call)
    profile = cachekern.profile(pipe, lambda: generate(pipe, call, seed=7), resnets=True)
    assert profile.steps == STEPS and len(profile.units) > 0

    with cachekern.patched(pipe, cachekern.BlockCaching(profile, delta=0.0, scale_shift=None)):
        assert torch.equal(generate(pipe, call), uncached)
    with cachekern.patched(pipe, cachekern.BlockCaching(profile, target_compute=0.5,
                                                        scale_shift=None)) as handle:
        cached = generate(pipe, call)
        again = generate(pipe, call)       # a second generation starts afresh
        reused = handle.stats()["blocks_reused"]
    assert torch.equal(cached, again) and reused > 0
    assert not torch.equal(cached, uncached) and torch.isfinite(cached).all()
    assert torch.equal(generate(pipe, call), uncached)


@pytest.mark.parametrize("name", sorted(tiny_pipelines.UNET_PIPELINES))
def test_teacache_on_a_unet_pipeline(name):
    pipe, call = tiny_pipelines.UNET_PIPELINES[name]()
    pipe.set_progress_bar_config(disable=True)
    uncached = generate(pipe, call)
    with cachekern.patched(pipe, cachekern.TeaCache(threshold=0.0, coefficients=None)) as handle:
        assert torch.equal(generate(pipe, call), uncached)
        assert handle.stats()["skipped"] == 0
    # CFG batched into one call a step; the step count from the pipeline's scheduler.
    policy = cachekern.TeaCache(threshold=1e9, coefficients=None, forecast_order=1)
    with cachekern.patched(pipe, policy) as handle:
        cached = generate(pipe, call, steps=STEPS + 1)
        branches = steps_of(handle)
    assert len(branches) == 1
    [records] = branches.values()
    assert records == [(s, s in (0, STEPS)) for s in range(STEPS + 1)]
    assert torch.isfinite(cached).all()
    assert torch.equal(generate(pipe, call), uncached)


def test_wan22_experts_are_patched_each_with_its_own_state():
    pipe, call = tiny_pipelines.wan(two_experts=True)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="transformer_2"):
        cachekern.patch(pipe, cachekern.TeaCache())
    steps = 6
    uncached = generate(pipe, call, steps=steps)
    with cachekern.patched(pipe.transformer, cachekern.TeaCache(threshold=0.0)), \
            cachekern.patched(pipe.transformer_2, cachekern.TeaCache(threshold=0.0)):
        assert torch.equal(generate(pipe, call, steps=steps), uncached)
    with cachekern.patched(pipe.transformer, cachekern.TeaCache(threshold=1e9)) as high, \
            cachekern.patched(pipe.transformer_2, cachekern.TeaCache(threshold=1e9)) as low:
        cached = generate(pipe, call, steps=steps)
        high_steps, low_steps = steps_of(high), steps_of(low)
    assert torch.isfinite(cached).all()
    assert sorted(high_steps) == sorted(low_steps) == ["cond", "uncond"]
    for branch in ("cond", "uncond"):
        first, second = high_steps[branch], low_steps[branch]
        assert 1 < len(first) < steps - 2 and len(first) + len(second) == steps
        # Each expert computes its first call (it has nothing cached); the low-noise expert
        # computes the generation's last step, which it counts as its own last call.
        assert first[0][1] and second[0][1] and second[-1][1]
        assert not any(c for _, c in first[1:]) and not any(c for _, c in second[1:-1])
