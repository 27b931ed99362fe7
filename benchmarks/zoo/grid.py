"""Writes a batch of images (or clips) in [-1, 1] as one PNG grid."""

import torch


def save_clip_grid(batch: torch.Tensor, path, per_class, upscale=1):
    """Images: `per_class` to a row. Clips [B, C, F, H, W]: one clip to a row, its frames left to
    right."""
    if batch.dim() == 5:
        b, c, f, h, w = batch.shape
        save_grid(batch.transpose(1, 2).reshape(b * f, c, h, w), path, f, upscale)
    else:
        save_grid(batch, path, per_class, upscale)


def save_grid(images: torch.Tensor, path, columns, upscale=1):
    """Images [B, C, H, W], row-major, `columns` to a row, with white gutters."""
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
