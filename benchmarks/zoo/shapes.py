"""Vectorised drawing of anti-aliased shapes and backgrounds on a batch of canvases, for the
procedural training data of pixart-scenes and wan-motion: every image in a batch has its own shape
kind, place, size, rotation and colour, and the whole batch is drawn in a few tensor operations on
the training device.

Coordinates are in [-1, 1] on both axes (x right, y down); sizes are half-extents in those units.
"""

import math

import torch

KINDS = ("circle", "square", "triangle", "ring", "cross", "bar")
# Hue ranges of the colour families (hue in [0, 1)): a sample's family is readable at a glance.
FAMILIES = {"red": (0.98, 0.04), "yellow": (0.12, 0.17), "green": (0.27, 0.40),
            "blue": (0.56, 0.68)}


def grid(size, device):
    """[size, size] x and y of the pixel centres."""
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    return axis[None, :].expand(size, size), axis[:, None].expand(size, size)


def hsv_to_rgb(h, s, v):
    """[..., 3] RGB in [0, 1] from hue, saturation and value tensors of one shape."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[..., None] - (v * s)[..., None] * ramp


def family_hue(family, generator, device):
    """A hue drawn inside each family's range ([N] family indices into FAMILIES)."""
    ranges = torch.tensor(list(FAMILIES.values()), device=device)
    lo, hi = ranges[family, 0], ranges[family, 1]
    width = (hi - lo) % 1.0
    return (lo + uniform(len(family), 0, 1, generator, device) * width) % 1.0


def uniform(n, lo, hi, generator, device):
    return (lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)).to(device)


def signed_distance(kind, x, y, cx, cy, size, angle):
    """[N, H, W] distance-like field (negative inside) of shape `kind[i]` centred at (cx, cy)."""
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = size[:, None, None]
    au, av = u.abs(), v.abs()
    radius = torch.sqrt(u * u + v * v)
    fields = torch.stack([
        radius - r,                                                              # circle
        torch.maximum(au, av) - 0.8 * r,                                         # square
        torch.maximum(au * math.sqrt(3) / 2 - v / 2, v) - r / 2,                 # triangle
        (radius - 0.7 * r).abs() - 0.3 * r,                                      # ring
        torch.minimum(torch.maximum(au - r, av - 0.3 * r),
                      torch.maximum(au - 0.3 * r, av - r)),                      # cross
        torch.maximum(au - r, av - 0.35 * r),                                    # bar
    ])
    index = kind[None, :, None, None].expand(1, *fields.shape[1:])
    return fields.gather(0, index)[0]


def draw(canvas, kind, cx, cy, size, angle, rgb):
    """Paints one shape on each canvas ([N, 3, H, W] in [0, 1]), with a one-pixel soft edge."""
    n, _, h, w = canvas.shape
    x, y = grid(w, canvas.device)
    alpha = (0.5 - signed_distance(kind, x, y, cx, cy, size, angle) * (w / 2)).clamp(0, 1)
    return canvas * (1 - alpha[:, None]) + rgb[:, :, None, None] * alpha[:, None]


def background(n, size, generator, device):
    """[N, 3, H, W] in [0, 1]: a gradient between two muted colours along a random direction,
    with stripes or a smooth noise texture on top."""
    x, y = grid(size, device)
    hues = uniform(2 * n, 0, 1, generator, device).view(n, 2)
    sats = uniform(2 * n, 0.0, 0.3, generator, device).view(n, 2)
    vals = uniform(2 * n, 0.15, 0.9, generator, device).view(n, 2)
    ends = hsv_to_rgb(hues, sats, vals)                                      # [N, 2, 3]
    direction = uniform(n, 0, 2 * math.pi, generator, device)[:, None, None]
    ramp = ((x * torch.cos(direction) + y * torch.sin(direction)) / math.sqrt(2) + 1) / 2
    canvas = ends[:, 0, :, None, None] * (1 - ramp[:, None]) + ends[:, 1, :, None, None] * ramp[:, None]
    stripes = torch.rand(n, generator=generator, device=generator.device).to(device) < 0.5
    angle = uniform(n, 0, math.pi, generator, device)[:, None, None]
    frequency = uniform(n, 2, 6, generator, device)[:, None, None] * math.pi
    phase = uniform(n, 0, 2 * math.pi, generator, device)[:, None, None]
    wave = torch.sin(frequency * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
    coarse = torch.randn(n, 1, 4, 4, generator=generator, device=generator.device).to(device)
    noise = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                            align_corners=False)[:, 0]
    texture = torch.where(stripes[:, None, None], wave, noise)
    amplitude = uniform(n, 0.03, 0.12, generator, device)[:, None, None, None]
    return (canvas + amplitude * texture[:, None]).clamp(0, 1)
