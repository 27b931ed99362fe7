"""Procedural clips for wan-motion: one shape on a textured gradient background, moving along a
smooth random path while its hue drifts. The class is the motion kind × the shape kind; place,
speed, direction, size, colour and background are random. Unbounded: every batch is new."""

import math

import torch

from benchmarks.zoo import shapes

MOTIONS = ("slide", "orbit", "spin", "pulse")
KINDS = ("square", "triangle", "cross", "bar")    # none looks the same under every rotation
NUM_CLASSES = len(MOTIONS) * len(KINDS)


def class_name(label):
    motion, kind = divmod(int(label), len(KINDS))
    return f"{KINDS[kind]} {MOTIONS[motion]}"


class Clips:
    """Batches of [N, 3, frames, size, size] clips in [-1, 1] with labels motion * len(KINDS) +
    kind."""

    def __init__(self, frames=9, size=32, device="cpu"):
        self.frames = frames
        self.size = size
        self.device = torch.device(device)

    def batch(self, n, generator, labels=None):
        device, f = self.device, self.frames
        if labels is None:
            labels = torch.randint(NUM_CLASSES, (n,), generator=generator, device=generator.device)
        labels = torch.as_tensor(labels).to(device)
        motion, kind = labels // len(KINDS), labels % len(KINDS)
        kind = torch.tensor([shapes.KINDS.index(k) for k in KINDS], device=device)[kind]
        tau = torch.linspace(0, 1, f, device=device)[None, :]                   # [1, F]

        def draw_per_clip(lo, hi):
            return shapes.uniform(n, lo, hi, generator, device)[:, None]

        def signed(lo, hi):
            sign = torch.randint(2, (n,), generator=generator, device=generator.device).to(device)[:, None] * 2 - 1
            return sign * draw_per_clip(lo, hi)

        mx, my = draw_per_clip(-0.25, 0.25), draw_per_clip(-0.25, 0.25)
        size0, angle0 = draw_per_clip(0.22, 0.34), draw_per_clip(0, 2 * math.pi)
        heading, travel = draw_per_clip(0, 2 * math.pi), draw_per_clip(0.6, 1.0)
        phase0, radius, turn = draw_per_clip(0, 2 * math.pi), draw_per_clip(0.25, 0.4), \
            signed(math.pi, 1.5 * math.pi)
        spin, pulse_phase = signed(0.6 * math.pi, 1.2 * math.pi), draw_per_clip(0, 2 * math.pi)
        m = motion[:, None]
        slide = (mx + (tau - 0.5) * travel * torch.cos(heading),
                 my + (tau - 0.5) * travel * torch.sin(heading))
        orbit = (mx + radius * torch.cos(phase0 + turn * tau),
                 my + radius * torch.sin(phase0 + turn * tau))
        cx = torch.where(m == 0, slide[0], torch.where(m == 1, orbit[0], mx.expand(n, f)))
        cy = torch.where(m == 0, slide[1], torch.where(m == 1, orbit[1], my.expand(n, f)))
        angle = torch.where(m == 2, angle0 + spin * tau, angle0.expand(n, f))
        size = torch.where(m == 3, size0 * (1 + 0.45 * torch.sin(2 * math.pi * tau + pulse_phase)),
                           size0.expand(n, f))
        hue = (draw_per_clip(0, 1) + signed(0.08, 0.25) * tau) % 1.0
        rgb = shapes.hsv_to_rgb(hue, draw_per_clip(0.6, 1.0).expand(n, f),
                                draw_per_clip(0.7, 1.0).expand(n, f))            # [N, F, 3]
        back = shapes.background(n, self.size, generator, device)
        frames = shapes.draw(back.repeat_interleave(f, 0), kind.repeat_interleave(f),
                             cx.reshape(-1), cy.reshape(-1), size.reshape(-1),
                             angle.reshape(-1), rgb.reshape(-1, 3))
        clips = frames.view(n, f, 3, self.size, self.size).transpose(1, 2)
        return clips * 2 - 1, labels

    def examples(self, per_class, generator):
        labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
        return self.batch(len(labels), generator, labels)[0]
