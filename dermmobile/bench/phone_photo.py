"""A 12-megapixel phone-sized JPEG made from a real photo, for timing decode + preprocess.

Data-set photos are small (sd198-27: 768 x 529); what a phone camera hands the app is
4032 x 3024. The bench and benchmarks/ time both. The photo is made on the fly in a
temporary folder (never committed): the source photo upscaled, plus seeded noise of a few
levels standing in for sensor noise and fine texture. Decoding a JPEG costs in proportion
to its file size (entropy decoding stays whole even when the DCT-domain reduction skips
most of the rest), and an upscaled photo alone is smooth: 0.7 MB where a phone's 12 MP
JPEG is 2-5 MB. With the noise the file is about 2 MB, the low end of real photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHONE_SIZE = (4032, 3024)  # 12 MP, 4:3: the default of most phone cameras
PHONE_QUALITY = 90
NOISE_LEVELS = 3.0  # standard deviation, 8-bit levels


def make_phone_photo(
    source: Path, out: Path, size: tuple[int, int] = PHONE_SIZE, noise: float = NOISE_LEVELS, seed: int = 0
) -> Path:
    """Write `source` upscaled to `size`, plus `noise` (standard deviation in levels), as a quality-90 JPEG at `out`."""
    from PIL import Image

    from dermmobile.data import decode_image

    image = decode_image(Path(source)).resize(size, Image.Resampling.BICUBIC)
    grain = np.random.default_rng(seed).normal(0.0, noise, (size[1], size[0], 1)).astype(np.float32)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    out = Path(out)
    Image.fromarray(pixels).save(out, "JPEG", quality=PHONE_QUALITY)
    return out
