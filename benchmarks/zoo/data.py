"""Training data that ships inside Python packages: scikit-image's bundled photographs (one class
per photograph, random 64×64 crops) and scikit-learn's handwritten digits (8×8, upsampled to
32×32). Both are held on the training device as tensors in [-1, 1]; batches are drawn there."""

import torch
import torch.nn.functional as F

PHOTO_SHORT_SIDE = 72   # each photograph is resized to this shorter side, then cropped to 64×64


def photographs(names, short_side=PHOTO_SHORT_SIDE, device="cpu"):
    """One [3, H, W] tensor in [-1, 1] per name of `skimage.data` (grayscale repeated to RGB)."""
    from skimage import data

    images = []
    for name in names:
        array = torch.from_numpy(getattr(data, name)()).float() / 255.0
        image = array[None].expand(3, -1, -1) if array.ndim == 2 else array[..., :3].permute(2, 0, 1)
        h, w = image.shape[1:]
        scale = short_side / min(h, w)
        size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                              align_corners=False)[0]
        images.append((image * 2 - 1).clamp(-1, 1).to(device))
    return images


class PhotoCrops:
    """Random crops of the photographs; the label is the photograph's index."""

    def __init__(self, names, crop=64, device="cpu"):
        self.images = photographs(names, device=device)
        self.crop = crop
        self.device = device

    def batch(self, size, generator, labels=None):
        if labels is None:
            labels = torch.randint(len(self.images), (size,), generator=generator)
        crops = []
        for label in labels.tolist():
            image = self.images[label]
            top = int(torch.randint(image.shape[1] - self.crop + 1, (1,), generator=generator))
            left = int(torch.randint(image.shape[2] - self.crop + 1, (1,), generator=generator))
            crops.append(image[:, top:top + self.crop, left:left + self.crop])
        return torch.stack(crops), labels.to(self.device)


class Digits:
    """scikit-learn's 1,797 digits, upsampled to 32×32; the label is the digit."""

    def __init__(self, size=32, device="cpu"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float()[:, None] / 16.0   # 0..16 grey levels
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        self.images = (images * 2 - 1).clamp(-1, 1).to(device)
        self.labels = torch.from_numpy(digits.target).long().to(device)

    def batch(self, size, generator):
        index = torch.randint(len(self.images), (size,), generator=generator).to(self.device)
        return self.images[index], self.labels[index]

    @property
    def device(self):
        return self.images.device

    def examples(self, per_class, num_classes=10):
        """The first `per_class` images of each class, class by class."""
        rows = [self.images[self.labels == c][:per_class] for c in range(num_classes)]
        return torch.cat(rows)
