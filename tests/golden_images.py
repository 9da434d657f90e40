"""Images and manifests for golden-sample tests (Java in test_android.py, JavaScript in test_web_preprocess.py).

Everything is generated at test time; no image data is committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dermmobile.artifact import Manifest, TensorSpec
from dermmobile.preprocess import PreprocessSpec
from dermmobile.synthetic import PAPER_CLASSES, synthetic_image

# (width, height): portrait, landscape, tiny (upsampled), odd sizes, and 129x128 / 128x129 whose
# resized long side 64.5 exercises round-half-up on either axis.
SIZES = [(37, 91), (150, 64), (5, 7), (101, 99), (129, 128), (128, 129), (64, 64)]


def small_images(folder: Path, sizes=SIZES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        pixels = synthetic_image(index % 9, index, size=max(width, height, 8))[:height, :width]
        path = folder / f"img{index}_{width}x{height}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)
        paths.append(path)
    return paths


def phone_images(folder: Path) -> dict[str, Path]:
    """Photos as a phone gives them (generated here, never committed): a 12 MP JPEG (v2 decodes
    it at 1/8), a JPEG stored sideways with an EXIF rotation, a JPEG whose shorter side is exactly
    8 x 64 and 2 x 256 (the reduced-decode rule's boundary for both specs below), and a 3.8 MP
    PNG (no reduced decode: a long filter over every row)."""
    from dermmobile.bench.phone_photo import make_phone_photo

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "source.png"
    Image.fromarray(synthetic_image(3, 0, size=160)).save(source)
    phone = make_phone_photo(source, folder / "phone-4032x3024.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    sideways = folder / "sideways-1203x901.jpg"
    Image.open(source).resize((1203, 901), Image.Resampling.BICUBIC).save(sideways, quality=92, exif=exif)
    boundary = folder / "boundary-512x700.jpg"
    Image.open(source).resize((512, 700), Image.Resampling.BICUBIC).save(boundary, quality=92)
    big_png = folder / "large-2401x1599.png"
    Image.open(phone).resize((2401, 1599), Image.Resampling.BILINEAR).save(big_png, compress_level=1)
    return {"phone": phone, "sideways": sideways, "boundary": boundary, "png": big_png}


def golden_manifest(spec: PreprocessSpec, layout: str, dtype: str, file: str = "model.tflite") -> Manifest:
    crop = spec.crop
    shape = [1, 3, crop, crop] if layout == "NCHW" else [1, crop, crop, 3]
    quantized = dtype in ("int8", "uint8")
    return Manifest(
        format="tflite",
        quantization="int8" if quantized else "none",
        file=file,
        arch="tiny_cnn",
        labels=list(PAPER_CLASSES),
        input=TensorSpec(
            "image",
            shape,
            dtype,
            layout,
            scale=0.0187 if quantized else None,
            zero_point=(-14 if dtype == "int8" else 114) if quantized else None,
        ),
        output=TensorSpec("logits", [1, len(PAPER_CLASSES)], "float32"),
        preprocess=spec.to_dict(),
        sha256="0" * 64,
    )
