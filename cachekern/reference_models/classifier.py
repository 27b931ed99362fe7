"""A small CNN per reference model, trained on that model's data (benchmarks/zoo/train_classifier.py)
and shipped beside it: its class accuracy on samples says whether they show what was asked for, and
its pooled features give a Fréchet distance between samples and real data (cachekern.metrics), the
distribution check beside PSNR/SSIM against the uncached run.

    from cachekern.reference_models import classifier
    net = classifier.load("pixart-scenes")
    logits, features = net(images), net.features(images)   # images or clips in [-1, 1]
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from cachekern.reference_models import store

FILE = "classifier.safetensors"     # in a zoo directory: <zoo>/<name>/classifier.safetensors
INPUT_SIZE = 32                      # larger images are average-pooled to 32×32 first


def shipped_path(name):
    return store.SHIPPED_DIR / f"{name}.classifier.safetensors"


def zoo_path(name, cache_dir=None):
    return store.model_dir(name, cache_dir) / FILE


class Classifier(nn.Module):
    """Images [B, C, H, W] or clips [B, C, F, H, W] (frames folded into channels) → logits;
    `features` are the pooled activations before the last layer."""

    def __init__(self, in_channels, num_classes, width=32):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width)
        widths = (in_channels, width, 2 * width, 4 * width, 4 * width)
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def features(self, x):
        if x.dim() == 5:
            x = x.flatten(1, 2)
        if x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"images: expected {self.config['in_channels']} channels (frames × "
                             f"colours for clips), got shape {tuple(x.shape)}")
        if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
            x = F.adaptive_avg_pool2d(x, INPUT_SIZE)
        return self.body(x.float()).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def save(path, net: Classifier, meta: dict):
    return store.save_parts(path, dict(classifier=net), dict(meta, config=net.config))


def load(name, device="cpu", cache_dir=None) -> Classifier:
    """The classifier of reference model `name`: the one shipped with cachekern (its sha256
    checked first), or, when `cache_dir` or $CACHEKERN_ZOO names a zoo directory, the one
    `python -m benchmarks.zoo.train_classifier <name>` wrote there."""
    rebuild = f"python -m benchmarks.zoo.train_classifier {name}"
    if cache_dir is not None or os.environ.get(store.ENV_DIR):
        path = zoo_path(name, cache_dir)
        if not path.is_file():
            raise FileNotFoundError(f"no classifier of {name} at {path}: train it with "
                                    f"`{rebuild}`")
    else:
        path = shipped_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no shipped classifier at {path}; rebuild it with "
                                    f"`{rebuild} --ship`")
        store.verify(path, rebuild=f"{rebuild} --ship")
    parts, meta = store.read_parts(path)
    if meta.get("name") != name:
        raise ValueError(f"{path} holds the classifier of {meta.get('name')!r}, not {name!r}")
    net = Classifier(**meta["config"])
    net.load_state_dict(parts["classifier"])
    return net.to(device).eval()
