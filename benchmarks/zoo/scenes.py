"""Procedural scenes for pixart-scenes: a textured gradient background with one large shape (the
class: its kind × colour family) and up to three smaller shapes of any kind and colour, drawn in a
random order (so they overlap and may cover part of the large one). Unbounded: every batch is new."""

import math

import torch

from benchmarks.zoo import shapes

KINDS = ("circle", "square", "triangle", "ring", "cross")
FAMILIES = tuple(shapes.FAMILIES)
NUM_CLASSES = len(KINDS) * len(FAMILIES)
MAX_SMALL = 3


def class_name(label):
    kind, family = divmod(int(label), len(FAMILIES))
    return f"{FAMILIES[family]} {KINDS[kind]}"


class Scenes:
    """Batches of [N, 3, size, size] scenes in [-1, 1] with labels kind * len(FAMILIES) + family."""

    def __init__(self, size=32, device="cpu"):
        self.size = size
        self.device = torch.device(device)

    def batch(self, n, generator, labels=None):
        device = self.device
        if labels is None:
            labels = torch.randint(NUM_CLASSES, (n,), generator=generator, device=generator.device)
        labels = torch.as_tensor(labels).to(device)
        canvas = shapes.background(n, self.size, generator, device)
        kind_of = torch.tensor([shapes.KINDS.index(k) for k in KINDS], device=device)
        # The large shape is drawn at a random place in the order of the small ones.
        small = torch.randint(MAX_SMALL + 1, (n,), generator=generator, device=generator.device).to(device)
        large_at = (torch.rand(n, generator=generator, device=generator.device).to(device) * (small + 1)).long()
        for slot in range(MAX_SMALL + 1):
            is_large = large_at == slot
            present = is_large | (slot < small + (slot > large_at).long())
            kind = kind_of[torch.where(is_large, labels // len(FAMILIES),
                                       torch.randint(len(KINDS), (n,), generator=generator,
                                                     device=generator.device).to(device))]
            family = torch.where(is_large, labels % len(FAMILIES),
                                 torch.randint(len(FAMILIES), (n,), generator=generator,
                                                       device=generator.device).to(device))
            size = torch.where(is_large, shapes.uniform(n, 0.32, 0.5, generator, device),
                               shapes.uniform(n, 0.1, 0.2, generator, device))
            spread = torch.where(is_large, 0.45, 0.75)
            cx = shapes.uniform(n, -1, 1, generator, device) * spread
            cy = shapes.uniform(n, -1, 1, generator, device) * spread
            angle = shapes.uniform(n, 0, 2 * math.pi, generator, device)
            rgb = shapes.hsv_to_rgb(shapes.family_hue(family, generator, device),
                                    shapes.uniform(n, 0.6, 1.0, generator, device),
                                    shapes.uniform(n, 0.7, 1.0, generator, device))
            drawn = shapes.draw(canvas, kind, cx, cy, size, angle, rgb)
            canvas = torch.where(present[:, None, None, None], drawn, canvas)
        return canvas * 2 - 1, labels

    def examples(self, per_class, generator):
        """`per_class` scenes of each class, class by class."""
        labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
        return self.batch(len(labels), generator, labels)[0]
