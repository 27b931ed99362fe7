"""Where trained reference models live and how one is written and read: one safetensors file per
model holding the network's and the conditioner's tensors, with the architecture and the recipe's
facts as JSON in the file's metadata, so a file is self-describing and needs no code to locate
its config."""

import json
import os
from pathlib import Path

import torch

ENV_DIR = "CACHEKERN_ZOO"
WEIGHTS = "model.safetensors"
SAMPLES = "samples.png"


def zoo_dir(cache_dir=None) -> Path:
    """`cache_dir` if given, else $CACHEKERN_ZOO, else ~/.cache/cachekern/zoo."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return Path.home() / ".cache" / "cachekern" / "zoo"


def model_dir(name, cache_dir=None) -> Path:
    return zoo_dir(cache_dir) / name


def save(path, model: torch.nn.Module, conditioner: torch.nn.Module, meta: dict) -> Path:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({f"conditioner.{k}": v.detach().contiguous().cpu()
                    for k, v in conditioner.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"cachekern": json.dumps(meta, sort_keys=True)})
    return path


def read(path):
    """(model state, conditioner state, meta) of a file written by `save`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference model at {path}")
    model_state, conditioner_state = {}, {}
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("cachekern")
        if raw is None:
            raise ValueError(f"{path} was not written by cachekern.reference_models (no metadata)")
        for key in f.keys():
            part, _, name = key.partition(".")
            (model_state if part == "model" else conditioner_state)[name] = f.get_tensor(key)
    return model_state, conditioner_state, json.loads(raw)
