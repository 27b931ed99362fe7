"""Where reference models live and how one is written and read: one safetensors file per model
holding the network's and the conditioner's tensors (fp16), with the architecture and the recipe's
facts as JSON in the file's metadata, so a file is self-describing and needs no code to locate
its config.

Two places: the weights shipped inside the package (`weights/<name>.safetensors`, each checked
against its sha256 in `weights/SHA256SUMS` before it is read), and a zoo directory where
`benchmarks/zoo/train.py` writes a model it rebuilds."""

import hashlib
import json
import os
from pathlib import Path

import torch

ENV_DIR = "CACHEKERN_ZOO"
WEIGHTS = "model.safetensors"
SAMPLES = "samples.png"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHA256SUMS = "SHA256SUMS"
STORED_DTYPE = torch.float16   # shipped size: half of fp32; models load back into fp32


def zoo_dir(cache_dir=None) -> Path:
    """`cache_dir` if given, else $CACHEKERN_ZOO, else ~/.cache/cachekern/zoo."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return Path.home() / ".cache" / "cachekern" / "zoo"


def model_dir(name, cache_dir=None) -> Path:
    return zoo_dir(cache_dir) / name


def shipped_path(name) -> Path:
    return SHIPPED_DIR / f"{name}.safetensors"


def _folder_of(path) -> Path:
    return Path(path).parent


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_hashes(folder=None) -> dict:
    """{file name: sha256} from SHA256SUMS (the `sha256sum` format) in `folder` (default: the
    shipped weights' folder)."""
    sums = Path(folder if folder is not None else SHIPPED_DIR) / SHA256SUMS
    if not sums.is_file():
        return {}
    pairs = (line.split() for line in sums.read_text().splitlines() if line.strip())
    return {file.lstrip("*"): digest for digest, file in pairs}


def record_hash(path):
    """Writes `path`'s sha256 into SHA256SUMS beside it (replacing the file's old line)."""
    hashes = shipped_hashes(_folder_of(path))
    hashes[Path(path).name] = sha256_of(path)
    lines = [f"{digest}  {file}" for file, digest in sorted(hashes.items())]
    (_folder_of(path) / SHA256SUMS).write_text("\n".join(lines) + "\n")


def verify(path, rebuild=None):
    """Raises unless `path`'s sha256 is the one SHA256SUMS beside it records; `rebuild` is the
    command that makes the file again (default: the reference model's training command)."""
    rebuild = rebuild or f"python -m benchmarks.zoo.train {Path(path).stem} --ship"
    expected = shipped_hashes(_folder_of(path)).get(Path(path).name)
    if expected is None:
        raise ValueError(f"{path}: no sha256 recorded in {_folder_of(path) / SHA256SUMS}")
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} differs from the recorded {expected}: the file "
                         f"is damaged or was replaced; reinstall cachekern, or rebuild it with "
                         f"`{rebuild}`")


def save(path, model: torch.nn.Module, conditioner: torch.nn.Module, meta: dict,
         dtype=STORED_DTYPE) -> Path:
    """A reference model: its network and its conditioner."""
    return save_parts(path, dict(model=model, conditioner=conditioner), meta, dtype)


def read(path):
    """(model state, conditioner state, meta) of a file written by `save`, floating tensors in
    fp32."""
    parts, meta = read_parts(path)
    return parts.get("model", {}), parts.get("conditioner", {}), meta


def save_parts(path, parts: dict, meta: dict, dtype=STORED_DTYPE) -> Path:
    """Each module of `parts` ({part name: module}) under its name, with `meta` as JSON."""
    from safetensors.torch import save_file

    def stored(t):
        t = t.detach().contiguous().cpu()
        return t.to(dtype) if t.is_floating_point() else t

    tensors = {f"{part}.{k}": stored(v) for part, module in parts.items()
               for k, v in module.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"cachekern": json.dumps(meta, sort_keys=True)})
    return path


def read_parts(path):
    """({part name: state dict}, meta) of a file written by `save_parts`, floating tensors in
    fp32."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference model at {path}")
    parts = {}
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("cachekern")
        if raw is None:
            raise ValueError(f"{path} was not written by cachekern.reference_models (no metadata)")
        for key in f.keys():
            part, _, name = key.partition(".")
            tensor = f.get_tensor(key)
            parts.setdefault(part, {})[name] = tensor.float() if tensor.is_floating_point() \
                else tensor
    return parts, json.loads(raw)
