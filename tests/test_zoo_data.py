"""The reference models' procedural training data (benchmarks/zoo): shapes drawn where they are
asked for, colours in their families, scenes and clips reproducible from a seed and labelled as
their classes say."""

import colorsys
import math

import pytest
import torch

from benchmarks.zoo import motion, scenes, shapes


def test_hsv_to_rgb_matches_colorsys():
    g = torch.Generator().manual_seed(0)
    h, s, v = torch.rand(3, 37, generator=g).double()
    rgb = shapes.hsv_to_rgb(h, s, v)
    expected = torch.tensor([colorsys.hsv_to_rgb(*hsv) for hsv in zip(h.tolist(), s.tolist(),
                                                                       v.tolist())],
                            dtype=torch.float64)
    torch.testing.assert_close(rgb, expected, rtol=0, atol=1e-12)


def inside(kind, u, v, r):
    """Whether the point (u, v), in the shape's own frame, lies in the shape (plain geometry)."""
    radius = math.hypot(u, v)
    if kind == "circle":
        return radius < r
    if kind == "square":
        return max(abs(u), abs(v)) < 0.8 * r
    if kind == "triangle":   # apex (0, -r), base from (±0.866 r, r / 2)
        return v < r / 2 and abs(u) < (v + r) / math.sqrt(3)
    if kind == "ring":
        return 0.4 * r < radius < r
    if kind == "cross":
        return (abs(u) < r and abs(v) < 0.3 * r) or (abs(u) < 0.3 * r and abs(v) < r)
    if kind == "bar":
        return abs(u) < r and abs(v) < 0.35 * r
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_each_shape_covers_the_pixels_its_geometry_says(kind):
    size, n = 29, 3
    g = torch.Generator().manual_seed(shapes.KINDS.index(kind))
    cx, cy = (torch.rand(n, generator=g) - 0.5) * 0.6, (torch.rand(n, generator=g) - 0.5) * 0.6
    r = 0.3 + 0.3 * torch.rand(n, generator=g)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    rgb = torch.rand(n, 3, generator=g)
    canvas = torch.rand(n, 3, size, size, generator=g)
    drawn = shapes.draw(canvas, torch.full((n,), shapes.KINDS.index(kind)), cx, cy, r, angle, rgb)
    pixel = 2 / size
    checked = 0
    for i in range(n):
        c, s = math.cos(angle[i]), math.sin(angle[i])
        for row in range(size):
            for col in range(size):
                x, y = (col + 0.5) * pixel - 1, (row + 0.5) * pixel - 1
                dx, dy = x - cx[i].item(), y - cy[i].item()
                u, v = c * dx + s * dy, -s * dx + c * dy
                # pixels well inside or well outside (not on the soft edge) are exact
                near = [inside(kind, u + a, v + b, r[i].item()) for a in (-pixel, 0, pixel)
                        for b in (-pixel, 0, pixel)]
                if all(near):
                    assert torch.allclose(drawn[i, :, row, col], rgb[i]), (i, row, col)
                    checked += 1
                elif not any(near):
                    assert torch.equal(drawn[i, :, row, col], canvas[i, :, row, col])
    assert checked > 10 * n


def test_scenes_are_reproducible_and_labelled():
    data = scenes.Scenes(size=32)
    a, labels = data.batch(13, torch.Generator().manual_seed(5))
    b, labels_b = data.batch(13, torch.Generator().manual_seed(5))
    c, _ = data.batch(13, torch.Generator().manual_seed(6))
    assert a.shape == (13, 3, 32, 32) and torch.equal(a, b) and torch.equal(labels, labels_b)
    assert not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and labels.max() < scenes.NUM_CLASSES
    asked = torch.tensor([0, 7, 19])
    _, given = data.batch(3, torch.Generator().manual_seed(1), asked)
    assert torch.equal(given, asked)
    assert scenes.NUM_CLASSES == 20 and scenes.class_name(7) == "blue square"


def test_the_large_shape_has_its_class_colour_and_size(monkeypatch):
    """Alone on a flat background, the shape a class draws is in its colour family and large."""
    monkeypatch.setattr(shapes, "background",
                        lambda n, size, generator, device: torch.full((n, 3, size, size), 0.5))
    monkeypatch.setattr(scenes, "MAX_SMALL", 0)
    labels = torch.arange(scenes.NUM_CLASSES).repeat(2)
    images, _ = scenes.Scenes(size=32).batch(len(labels), torch.Generator().manual_seed(2), labels)
    for image, label in zip((images + 1) / 2, labels.tolist()):
        shape = (image - 0.5).abs().amax(0) > 0.2
        assert shape.sum() >= 30, label       # the smallest large shape covers ~34 pixels
        hue = colorsys.rgb_to_hsv(*image[:, shape].median(1).values.tolist())[0]
        lo, hi = list(shapes.FAMILIES.values())[label % len(shapes.FAMILIES)]
        assert (hue >= lo or hue <= hi) if lo > hi else lo <= hue <= hi, (label, hue)


def shape_centre_and_area(clip, background):
    """Per frame: the centroid and area of the pixels that differ from the background."""
    mask = (clip - background).abs().amax(0) > 0.2                      # [F, H, W]
    ys, xs = torch.meshgrid(torch.arange(clip.shape[-2]), torch.arange(clip.shape[-1]),
                            indexing="ij")
    area = mask.sum((1, 2)).float()
    return torch.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], 1), area


@pytest.mark.parametrize("motion_kind", motion.MOTIONS)
def test_clips_move_as_their_class_says(motion_kind, monkeypatch):
    """With a flat background, the shape's centroid travels for slide and orbit, stays put for
    spin and pulse; its area swings for pulse only."""
    monkeypatch.setattr(shapes, "background",
                        lambda n, size, generator, device: torch.full((n, 3, size, size), 0.5))
    data = motion.Clips(frames=9, size=32)
    labels = torch.tensor([motion.MOTIONS.index(motion_kind) * len(motion.KINDS) + k
                           for k in range(len(motion.KINDS))])
    clips, _ = data.batch(len(labels), torch.Generator().manual_seed(3), labels)
    assert clips.shape == (4, 3, 9, 32, 32)
    for clip in (clips + 1) / 2:
        centre, area = shape_centre_and_area(clip, 0.5)
        travel = (centre[1:] - centre[:-1]).norm(dim=1).sum()
        swing = (area.max() - area.min()) / area.mean()
        if motion_kind in ("slide", "orbit"):
            assert travel > 4, travel                      # pixels, over the clip
        else:
            assert travel < 2.5, travel
        assert (swing > 0.3) == (motion_kind == "pulse"), swing
