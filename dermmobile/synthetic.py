"""A small deterministic synthetic dataset with the founding paper's nine class names.

Used by `dermmobile demo` and the fast tests. Each class is a distinct, learnable
pattern (hue, blob count, texture) on a skin-toned background with noise. It is
SYNTHETIC: nothing learned from it says anything about real skin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PAPER_CLASSES = [
    "acne", "alopecia", "crust", "erythema", "leukoderma", "pigmented_macula", "pustule", "ulcer", "wheal",
]  # fmt: skip
SYNTHETIC_NOTE = "SYNTHETIC demo data: generated patterns, not clinical images; results mean nothing medically"


def synthetic_image(label: int, index: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """One HxWx3 uint8 image of class `label`; the same arguments give the same pixels."""
    rng = np.random.default_rng([seed, label, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    skin = np.array([224, 172, 150], np.float32) + rng.normal(0, 8, 3)
    image = np.ones((size, size, 3), np.float32) * skin
    hue = np.array(
        [[200, 60, 60], [240, 220, 200], [150, 100, 40], [235, 90, 90], [250, 250, 245],
         [90, 60, 40], [250, 240, 150], [120, 20, 30], [245, 160, 170]][label], np.float32,
    )  # fmt: skip
    blobs = 1 + (label % 4) * 2
    for _ in range(blobs):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        radius = size * rng.uniform(0.06, 0.12) * (1 + label % 3)
        mask = np.clip(1.2 - np.hypot(yy - cy, xx - cx) / radius, 0, 1)[..., None]
        image = image * (1 - mask) + hue * mask
    # A texture of class-specific frequency covers the whole image, so random crops keep the
    # class visible (the blobs alone can be cropped away); a checkerboard survives the
    # trainer's flips and quarter turns.
    period = 1.2 + 0.45 * label
    image += 24 * (np.sin(xx / period) * np.sin(yy / period))[..., None]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_dataset(root: Path, per_class: int = 12, size: int = 96, seed: int = 0, classes=None) -> Path:
    """Write `root/<class>/<class>_<i>.png` and a README saying it is synthetic (atomically, never through a link)."""
    import io

    from PIL import Image

    from dermmobile.fsutil import atomic_write_bytes, atomic_write_text

    root = Path(root)
    classes = list(classes or PAPER_CLASSES)
    for label, name in enumerate(classes):
        for index in range(per_class):
            png = io.BytesIO()
            Image.fromarray(synthetic_image(label, index, size, seed)).save(png, format="PNG")
            atomic_write_bytes(root / name / f"{name}_{index:03d}.png", png.getvalue())
    atomic_write_text(root / "README.txt", SYNTHETIC_NOTE + "\n")
    return root
