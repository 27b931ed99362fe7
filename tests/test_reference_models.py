"""The reference models' definitions (cachekern.reference_models): packing, conditioning, sampling,
and the zoo file format, on the real diffusers classes at the recipes' sizes (untrained)."""

import pytest
import torch

from cachekern import reference_models
from cachekern.reference_models import flux_photos, unet_digits

pytest.importorskip("diffusers")


def test_pack_and_unpack_are_inverse_and_tokens_are_patches():
    images = torch.randn(3, 3, 64, 64)
    tokens = flux_photos.pack(images)
    assert tokens.shape == (3, 256, 48)
    assert torch.equal(flux_photos.unpack(tokens), images)
    # token (row 2, column 5) holds the 4×4 patch at pixels [8:12, 20:24], channel-major
    patch = images[1, :, 8:12, 20:24].reshape(-1)
    assert torch.equal(tokens[1, 2 * 16 + 5], patch)
    ids = flux_photos.image_ids("cpu")
    assert ids[2 * 16 + 5].tolist() == [0.0, 2.0, 5.0]


@pytest.mark.parametrize("name", sorted(reference_models.RECIPES))
def test_save_and_load_round_trip(name, tmp_path):
    ref = reference_models.create(name, seed=3)
    assert not reference_models.is_trained(name, tmp_path)
    reference_models.save(reference_models.model_dir(name, tmp_path) / reference_models.WEIGHTS,
                          ref.model, ref.conditioner, ref.meta)
    assert reference_models.is_trained(name, tmp_path)
    loaded = reference_models.load(name, cache_dir=tmp_path)
    for a, b in [(ref.model, loaded.model), (ref.conditioner, loaded.conditioner)]:
        sa, sb = a.state_dict(), b.state_dict()
        # stored in fp16, loaded back into fp32: exactly the fp16 rounding of what was saved
        assert sa.keys() == sb.keys()
        assert all(sb[k].dtype == torch.float32 and torch.equal(sa[k].half().float(), sb[k])
                   for k in sa)
    with torch.no_grad():
        for p in ref.model.parameters():
            p.copy_(p.half().float())
        for p in ref.conditioner.parameters():
            p.copy_(p.half().float())
    steps = 1 if name == "wan-motion" else 2
    assert torch.equal(ref.sample([1, 0], [4, 5], steps=steps),
                       loaded.sample([1, 0], [4, 5], steps=steps))


@pytest.mark.parametrize("name", sorted(reference_models.RECIPES))
def test_every_reference_model_ships_trained_and_hash_checked(name, monkeypatch):
    from cachekern.reference_models import store

    monkeypatch.delenv("CACHEKERN_ZOO", raising=False)
    path = store.shipped_path(name)
    assert path.is_file() and path.stat().st_size <= 12 * 2**20
    assert store.sha256_of(path) == store.shipped_hashes()[path.name]
    assert reference_models.is_trained(name)
    ref = reference_models.load(name)
    assert ref.meta["name"] == name and ref.meta["iterations"] >= 1000   # trained, not a stand-in
    untrained = reference_models.create(name, seed=0)
    assert not torch.equal(next(ref.model.parameters()), next(untrained.model.parameters()))


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    import shutil

    from cachekern.reference_models import store

    name = "unet-digits"
    copy = tmp_path / f"{name}.safetensors"
    shutil.copyfile(store.shipped_path(name), copy)
    store.record_hash(copy)
    monkeypatch.setattr(store, "SHIPPED_DIR", tmp_path)
    monkeypatch.delenv("CACHEKERN_ZOO", raising=False)
    reference_models.load(name)                                    # intact: loads
    with open(copy, "r+b") as f:       # flip the last byte of the tensor data
        f.seek(-1, 2)
        last = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([last ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256 .* differs .* damaged"):
        reference_models.load(name)


def test_the_zoo_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHEKERN_ZOO", str(tmp_path))
    assert reference_models.zoo_dir() == tmp_path
    assert reference_models.model_dir("flux-photos") == tmp_path / "flux-photos"


def test_a_model_without_weights_says_how_to_build_it(tmp_path, monkeypatch):
    from cachekern.reference_models import store

    monkeypatch.setattr(store, "SHIPPED_DIR", tmp_path)      # as if the weights were not shipped
    monkeypatch.delenv("CACHEKERN_ZOO", raising=False)
    for name in reference_models.RECIPES:
        assert not reference_models.is_trained(name)
        with pytest.raises(FileNotFoundError, match=f"benchmarks.zoo.train {name} --ship"):
            reference_models.load(name)


@pytest.mark.parametrize("name,options", [
    ("flux-photos", {}), ("unet-digits", {"scheduler": "ddim"}),
    ("unet-digits", {"scheduler": "dpm++"}), ("pixart-scenes", {"scheduler": "euler"}),
    ("pixart-scenes", {"scheduler": "unipc"}), ("wan-motion", {"scheduler": "unipc"})])
def test_a_sample_depends_on_its_own_seed_and_label_only(name, options):
    ref = reference_models.create(name, seed=1)
    steps = 2 if name == "wan-motion" else 3
    batch = ref.sample([2, 0, 1], [7, 8, 9], steps=steps, **options)
    alone = ref.sample([1], [9], steps=steps, **options)
    size, recipe = ref.recipe.IMAGE_SIZE, ref.recipe
    frames = (recipe.FRAMES,) if name == "wan-motion" else ()
    assert batch.shape == (3, 1 if name == "unet-digits" else 3, *frames, size, size)
    assert batch.isfinite().all() and batch.abs().max() <= 1
    # equal up to rounding: the batch size changes how the matmuls and convolutions are split
    torch.testing.assert_close(batch[2:], alone, rtol=0, atol=2e-3)
    assert not torch.allclose(batch[0], batch[2])


def test_bad_arguments_are_named():
    ref = reference_models.create("flux-photos")
    with pytest.raises(ValueError, match="labels"):
        ref.sample([8], [0], steps=1)            # 8 classes: 0..7
    with pytest.raises(ValueError, match="seeds"):
        ref.sample([0, 1], [0], steps=1)
    with pytest.raises(ValueError, match="name"):
        reference_models.create("sd-cats")
    with pytest.raises(ValueError, match="scheduler"):
        unet_digits.make_scheduler("euler")
    with pytest.raises(ValueError, match="scheduler"):
        reference_models.create("pixart-scenes").sample([0], [0], steps=1, scheduler="ddim")


@pytest.mark.parametrize("name", ["pixart-scenes", "wan-motion"])
def test_flow_models_are_called_with_the_shifted_timesteps_their_samplers_give(name):
    """Both new recipes integrate a rectified flow on shifted sigmas: the model sees timestep
    1000·sigma of the sampler, one call per step and CFG branch (batched for PixArt)."""
    from cachekern.reference_models.common import flow_scheduler

    ref = reference_models.create(name, seed=0)
    seen = []
    hook = ref.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True)
    scheduler = ref.schedulers[0]
    ref.sample([0], [0], steps=4, scheduler=scheduler)
    hook.remove()
    solver = flow_scheduler(scheduler, ref.recipe.SAMPLING["shift"])
    solver.set_timesteps(4)
    calls_per_step = 1 if name == "pixart-scenes" else 2
    assert len(seen) == 4 * calls_per_step
    expected = solver.timesteps if scheduler == "euler" else solver.sigmas[:4] * 1000
    got = torch.stack([t[0] for t in seen[::calls_per_step]])
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-3)
    # shifted: the first half of the steps covers more than half of the noise levels
    assert got[0] - got[2] < got[2] - 0 and got[0] > 900


def test_loading_from_an_empty_zoo_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks.zoo.train unet-digits"):
        reference_models.load("unet-digits", cache_dir=tmp_path)


@pytest.mark.parametrize("name", sorted(reference_models.RECIPES))
def test_the_example_call_is_one_model_call_on_one_sample(name):
    ref = reference_models.create(name, seed=0)
    batches = []

    def note(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        batches.append(x.shape[0])
    hook = ref.model.register_forward_pre_hook(note, with_kwargs=True)
    try:
        out = ref.example_call(torch.device("cpu"))()
    finally:
        hook.remove()
    assert batches == [1]
    assert out[0].isfinite().all()
