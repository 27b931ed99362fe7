"""Each reference model's training data by model name, as objects with `batch(n, generator)` →
(images or clips in [-1, 1], labels) on a device."""

from benchmarks.zoo.data import Digits, PhotoCrops
from benchmarks.zoo.motion import Clips
from benchmarks.zoo.scenes import Scenes

from cachekern.reference_models import flux_photos, pixart_scenes, unet_digits, wan_motion


def data_source(name, device):
    if name == flux_photos.NAME:
        return PhotoCrops(flux_photos.PHOTOS, crop=flux_photos.IMAGE_SIZE, device=device)
    if name == unet_digits.NAME:
        return Digits(unet_digits.IMAGE_SIZE, device=device)
    if name == pixart_scenes.NAME:
        return Scenes(pixart_scenes.IMAGE_SIZE, device=device)
    if name == wan_motion.NAME:
        return Clips(wan_motion.FRAMES, wan_motion.IMAGE_SIZE, device=device)
    raise ValueError(f"name: no training data for {name!r}")
