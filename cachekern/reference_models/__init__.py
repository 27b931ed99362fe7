"""Small models of real diffusers classes trained by this project (weights cannot be downloaded
here, and caching behaves differently on random weights): their architectures, conditioners and
samplers, and loading by name from the zoo directory. The training recipes are in
benchmarks/zoo/.

    from cachekern import reference_models
    ref = reference_models.load("flux-photos", device="cuda")
    images = ref.sample(labels=[0, 1], seeds=[0, 1])      # [-1, 1], [B, C, H, W]
"""

from dataclasses import dataclass

import torch

from cachekern.reference_models import flux_photos, unet_digits
from cachekern.reference_models.store import SAMPLES, WEIGHTS, model_dir, read, save, zoo_dir

RECIPES = {flux_photos.NAME: flux_photos, unet_digits.NAME: unet_digits}

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


def is_trained(name, cache_dir=None) -> bool:
    _recipe(name)
    return (model_dir(name, cache_dir) / WEIGHTS).is_file()


def create(name, device="cpu", dtype=torch.float32, seed=0) -> ReferenceModel:
    """An untrained model and conditioner, initialised from `seed`."""
    recipe = _recipe(name)
    torch.manual_seed(seed)
    model = recipe.build_model(device, dtype).eval()
    conditioner = recipe.Conditioner().to(device)
    return ReferenceModel(name, model, conditioner, dict(name=name, config=recipe.CONFIG,
                                                         num_classes=conditioner.num_classes))


def load(name, device="cpu", dtype=torch.float32, cache_dir=None) -> ReferenceModel:
    """The trained model `name` from the zoo directory (see `zoo_dir`)."""
    recipe = _recipe(name)
    path = model_dir(name, cache_dir) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not trained: no {path}. Train it with "
                                f"`python benchmarks/zoo/train.py {name}` (one GPU, minutes), or "
                                f"point $CACHEKERN_ZOO at a directory holding it")
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
