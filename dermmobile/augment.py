"""Training-time augmentation on decoded uint8 images held in memory.

Only the trainer uses this room. Evaluation never does: it goes through the one
preprocessing spec (`dermmobile.preprocess`). Every random draw comes from a
generator seeded by (seed, epoch, image index), so a batch is the same whatever
thread built it and whether or not the run was interrupted and resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dermmobile.preprocess import PreprocessSpec


@dataclass(frozen=True)
class AugmentConfig:
    # Crop area share: torchvision's 0.08 lower bound throws away most of a lesion on
    # 26-image classes, so keep at least a third of the image.
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # Skin photos have no "up": both flips and quarter turns are label-preserving.
    hflip: bool = True
    vflip: bool = True
    quarter_turns: bool = True
    rotation: float = 15.0  # degrees, on top of the quarter turns
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    # No hue jitter: colour (redness, pigment) is what tells several classes apart.

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def downscale(image: Image.Image, shorter: int) -> np.ndarray:
    """Keep a uint8 copy whose shorter side is `shorter` (never upscaled): the in-memory training cache."""
    width, height = image.size
    scale = shorter / min(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _crop_box(rng: np.random.Generator, width: int, height: int, config: AugmentConfig) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: 10 tries at a random area and aspect ratio, then the centre."""
    area = width * height
    log_ratio = (math.log(config.ratio[0]), math.log(config.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*config.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def augment(rgb: np.ndarray, spec: PreprocessSpec, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """uint8 HxWx3 -> float32 3 x crop x crop, normalized like the spec."""
    image = Image.fromarray(rgb)
    if config.rotation:
        angle = rng.uniform(-config.rotation, config.rotation)
        # Fill the corners with the image's mean colour, not black, so they do not read as a lesion.
        fill = tuple(int(v) for v in rgb.reshape(-1, 3).mean(axis=0))
        image = image.rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill)
    box = _crop_box(rng, *image.size, config)
    image = image.resize((spec.crop, spec.crop), Image.Resampling.BILINEAR, box=box)
    if config.hflip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if config.vflip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if config.quarter_turns:
        turns = int(rng.integers(0, 4))
        if turns:
            image = image.transpose(
                [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][turns - 1]
            )
    values = np.asarray(image, dtype=np.float32)
    if config.brightness:
        values = values * rng.uniform(1 - config.brightness, 1 + config.brightness)
    if config.contrast:
        grey = values.mean()
        values = (values - grey) * rng.uniform(1 - config.contrast, 1 + config.contrast) + grey
    if config.saturation:
        grey = values.mean(axis=2, keepdims=True)
        values = (values - grey) * rng.uniform(1 - config.saturation, 1 + config.saturation) + grey
    values = np.clip(values, 0, 255) / spec.scale
    values = (values - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)
