"""Small models of real diffusers classes trained by this project (weights cannot be downloaded
here, and caching behaves differently on random weights): their architectures, conditioners and
samplers, and loading by name. Their trained weights ship with the package (fp16, sha256-checked);
the training recipes that rebuild them are in benchmarks/zoo/.

    from cachekern import reference_models
    ref = reference_models.load("flux-photos", device="cuda")
    images = ref.sample(labels=[0, 1], seeds=[0, 1])      # [-1, 1], [B, C, H, W] (video: [B, C, F, H, W])
"""

import os
from dataclasses import dataclass

import torch

from cachekern.reference_models import flux_photos, pixart_scenes, unet_digits, wan_motion
from cachekern.reference_models import store
from cachekern.reference_models.store import ENV_DIR, SAMPLES, WEIGHTS, model_dir, read, save, zoo_dir

RECIPES = {recipe.NAME: recipe for recipe in (flux_photos, unet_digits, pixart_scenes, wan_motion)}

__all__ = ["RECIPES", "ReferenceModel", "is_trained", "load", "model_dir", "save", "zoo_dir",
           "WEIGHTS", "SAMPLES"]


def _recipe(name):
    if name not in RECIPES:
        raise ValueError(f"name: expected one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]


@dataclass
class ReferenceModel:
    name: str
    model: torch.nn.Module
    conditioner: torch.nn.Module
    meta: dict

    @property
    def recipe(self):
        return _recipe(self.name)

    def sample(self, labels, seeds, **options) -> torch.Tensor:
        return self.recipe.sample(self.model, self.conditioner, labels, seeds, **options)

    @property
    def schedulers(self):
        """The samplers the recipe offers, its default first."""
        return self.recipe.SCHEDULERS

    def default_steps(self, scheduler):
        steps = self.recipe.SAMPLING["steps"]
        return steps[scheduler] if isinstance(steps, dict) else steps

    def example_call(self, device):
        """A callable making one model call on one sample, as the sampler makes it."""
        return self.recipe.example_call(self.model, self.conditioner, device)


def _rebuilt(cache_dir):
    """Whether weights are to come from a zoo directory (train.py's output) instead of the
    shipped ones: when one is named, by argument or by $CACHEKERN_ZOO."""
    return cache_dir is not None or bool(os.environ.get(ENV_DIR))


def is_trained(name, cache_dir=None) -> bool:
    """Whether `load(name, cache_dir=cache_dir)` finds weights."""
    _recipe(name)
    path = model_dir(name, cache_dir) / WEIGHTS if _rebuilt(cache_dir) else store.shipped_path(name)
    return path.is_file()


def create(name, device="cpu", dtype=torch.float32, seed=0) -> ReferenceModel:
    """An untrained model and conditioner, initialised from `seed`."""
    recipe = _recipe(name)
    torch.manual_seed(seed)
    model = recipe.build_model(device, dtype).eval()
    conditioner = recipe.Conditioner().to(device)
    return ReferenceModel(name, model, conditioner, dict(name=name, config=recipe.CONFIG,
                                                         num_classes=conditioner.num_classes))


def load(name, device="cpu", dtype=torch.float32, cache_dir=None) -> ReferenceModel:
    """The trained model `name`: the weights shipped with cachekern (their sha256 checked first),
    or, when `cache_dir` or $CACHEKERN_ZOO names a zoo directory, the ones
    `python -m benchmarks.zoo.train <name>` wrote there."""
    recipe = _recipe(name)
    if _rebuilt(cache_dir):
        path = model_dir(name, cache_dir) / WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{name} is not in the zoo directory {zoo_dir(cache_dir)}: no "
                                    f"{path}. Train it with `python -m benchmarks.zoo.train "
                                    f"{name}` (one GPU, minutes), or unset ${ENV_DIR} to load "
                                    f"the weights shipped with cachekern")
    else:
        path = store.shipped_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no shipped weights at {path}; rebuild them with "
                                    f"`python -m benchmarks.zoo.train {name} --ship`")
        store.verify(path)
    model_state, conditioner_state, meta = read(path)
    if meta.get("name") != name:
        raise ValueError(f"{path} holds {meta.get('name')!r}, not {name!r}")
    model = recipe.build_model("cpu", torch.float32, meta["config"])
    model.load_state_dict(model_state)
    conditioner = recipe.Conditioner(meta["num_classes"], meta["config"])
    conditioner.load_state_dict(conditioner_state)
    model = model.to(device)
    if dtype != torch.float32:    # (diffusers warns on any dtype cast, even a no-op one)
        model = model.to(dtype)
    return ReferenceModel(name, model.eval(), conditioner.to(device).eval(), meta)
