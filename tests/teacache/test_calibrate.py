"""cachekern.calibrate_teacache on a real diffusers class: the flux-photos reference model's
recipe (FluxTransformer2DModel, sampled with CFG as FluxPipeline does: two branches), untrained
and narrowed, at 4 steps, to keep the Triton interpreter's share of the CI time small."""

import numpy as np
import pytest
import torch

import cachekern
from cachekern import reference_models
from cachekern.teacache.calibrate import teacache_pairs

pytest.importorskip("diffusers")
STEPS = 4


NARROW = dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
              joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6])


@pytest.fixture(scope="module")
def ref():
    from cachekern.reference_models import flux_photos

    torch.manual_seed(2)
    config = dict(flux_photos.CONFIG, **NARROW)
    conditioner = flux_photos.Conditioner(config=config)
    return reference_models.ReferenceModel("flux-photos", flux_photos.build_model(config=config)
                                           .eval(), conditioner, dict(config=config))


def generate(ref):
    return ref.sample([0, 3], [11, 12], steps=STEPS)


def test_pairs_are_the_indicator_change_against_the_output_change(ref):
    outputs = []
    hook = ref.model.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        uncached = generate(ref)
    finally:
        hook.remove()
    with cachekern.patched(ref.model, cachekern.TeaCache(threshold=0.0, coefficients=None)) as h:
        generate(ref)
        indicator = [c["rel_l1"] for c in h.history if c["step"] > 0]

    pairs = teacache_pairs(ref.model, lambda: generate(ref))
    assert len(pairs) == 2 * (STEPS - 1)                     # two branches, all but step 0
    cond, uncond = outputs[0::2], outputs[1::2]              # calls alternate by branch
    expected = []
    for k in range(1, STEPS):
        for branch in (cond, uncond):
            prev, cur = branch[k - 1].float(), branch[k].float()
            expected.append(((cur - prev).abs().mean() / prev.abs().mean()).item())
    np.testing.assert_allclose([y for _, y in pairs], expected, rtol=1e-6)
    np.testing.assert_allclose([x for x, _ in pairs], indicator, rtol=1e-6)
    assert "forward" not in vars(ref.model)                  # unpatched afterwards
    assert torch.equal(generate(ref), uncached)


def test_coefficients_fit_the_pairs_and_drive_teacache(ref):
    coefficients = cachekern.calibrate_teacache(ref.model, lambda: generate(ref), degree=2)
    pairs = teacache_pairs(ref.model, lambda: generate(ref))
    x, y = map(np.asarray, zip(*pairs))
    np.testing.assert_allclose(coefficients, np.polyfit(x, y, 2), rtol=1e-9)
    with cachekern.patched(ref.model, cachekern.TeaCache(threshold=0.5, coefficients=coefficients,
                                                         clamp=True, num_inference_steps=STEPS)):
        assert generate(ref).isfinite().all()


def test_bad_arguments_are_named(ref):
    with pytest.raises(TypeError, match="run"):
        cachekern.calibrate_teacache(ref.model, None)
    with pytest.raises(ValueError, match="runs"):
        cachekern.calibrate_teacache(ref.model, lambda: generate(ref), runs=0)
    with pytest.raises(ValueError, match="degree"):
        cachekern.calibrate_teacache(ref.model, lambda: generate(ref), degree=-1)
    with pytest.raises(ValueError, match="pairs"):    # 2 steps × 2 branches: 2 pairs
        cachekern.calibrate_teacache(ref.model, lambda: ref.sample([0], [1], steps=2), degree=4)
    assert "forward" not in vars(ref.model)
