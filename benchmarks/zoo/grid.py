"""Writes a batch of images in [-1, 1] as one PNG grid (row-major, `columns` per row)."""

import torch


def save_grid(images: torch.Tensor, path, columns, upscale=1):
    from PIL import Image

    images = images.detach().float().cpu().clamp(-1, 1)
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    b, c, h, w = images.shape
    rows = -(-b // columns)
    canvas = torch.ones(c, rows * (h + 2) + 2, columns * (w + 2) + 2)   # white 2-px gutters
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        canvas[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = \
            (image + 1) / 2
    pixels = (canvas * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
