"""The one preprocessing spec: image file -> normalized float32 tensor.

Evaluation, calibration, benchmarking, prediction and the Android app all use this
and nothing else, so an artifact sees on a phone exactly what it saw at export time.

The algorithm, precisely enough to reproduce bit for bit (android_demo/preprocess-core
does, and its tests compare against tensors written here):

1. Decode to 8-bit RGB, EXIF orientation applied (`dermmobile.data.decode_image`).
2. Resize so the shorter side is `resize` pixels: scale s = resize / min(W, H); the
   output size is (round_half_up(W * s), round_half_up(H * s)) with the shorter side
   exactly `resize`.
3. Only the centre `crop` x `crop` window of that resized image is computed:
   left = (out_W - crop) // 2, top = (out_H - crop) // 2.
4. "bilinear" resampling is an antialiased triangle filter, separable, in float64:
   for an axis of n_in input and n_out output pixels, ratio r = n_in / n_out and
   support = max(r, 1). Output pixel o has centre c = (o + 0.5) * r; input pixel i
   gets weight max(0, 1 - |i + 0.5 - c| / support); the weights of each output pixel
   are divided by their sum. Rows are filtered first, then columns; no rounding
   between passes, no clamping afterwards (values stay within [0, 255]).
5. value = (pixel / 255 - mean[c]) / std[c], then cast to float32, laid out as CHW
   (NCHW with the batch axis), or HWC when an artifact's manifest says NHWC.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear",)


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    exif_transpose: bool = True
    scale: float = 255.0  # pixel values are divided by this before mean/std
    algorithm: str = field(default="dermmobile-preprocess-v1")

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise BadInputError(f"interpolation {self.interpolation!r} is not supported; valid: {', '.join(INTERPOLATIONS)}")
        if not (0 < self.crop <= self.resize):
            raise BadInputError(f"crop ({self.crop}) must be positive and no larger than resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise BadInputError(f"mean and std need three values each and std > 0, got {self.mean}, {self.std}")
        if self.color != "RGB" or not self.exif_transpose:
            raise BadInputError("only RGB colour order with EXIF transpose is implemented")
        from dermmobile.validation import check_preprocess_values

        check_preprocess_values(self.to_dict())  # sane ranges however the spec was made (--image-size 100000)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        from dermmobile.validation import check_preprocess_values

        check_preprocess_values(data)  # types and ranges of untrusted values (issue 15)
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise BadInputError(f"unknown preprocessing fields {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if values.get("algorithm", "dermmobile-preprocess-v1") != "dermmobile-preprocess-v1":
            raise BadInputError(f"preprocessing algorithm {values['algorithm']!r} is not known to this version")
        return cls(**values)

    # -- pixels -----------------------------------------------------------------------
    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 -> float64 crop x crop x 3 resized pixel values in [0, 255]."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise BadInputError(f"expected an HxWx3 RGB array, got shape {rgb.shape}")
        height, width = rgb.shape[:2]
        out_w, out_h = resized_size(width, height, self.resize)
        top = (out_h - self.crop) // 2
        left = (out_w - self.crop) // 2
        rows = filter_weights(height, out_h, top, self.crop)
        cols = filter_weights(width, out_w, left, self.crop)
        data = rgb.astype(np.float64)
        # Rows then columns, one channel at a time: two small matrix products each.
        return np.stack([rows @ data[:, :, c] @ cols.T for c in range(3)], axis=-1)

    def array(self, rgb: np.ndarray, layout: str = "NCHW") -> np.ndarray:
        """uint8 HxWx3 -> float32 normalized CHW (or HWC for layout NHWC)."""
        values = self.pixels(rgb) / self.scale
        values = (values - np.asarray(self.mean)) / np.asarray(self.std)
        values = values.astype(np.float32)
        return values if layout.upper() == "NHWC" else np.ascontiguousarray(values.transpose(2, 0, 1))

    def load(self, path: Path, layout: str = "NCHW") -> np.ndarray:
        """Decode one image file (see dermmobile.data.decode_image) and preprocess it."""
        from dermmobile.data import decode_image

        return self.array(np.asarray(decode_image(path)), layout)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Output (width, height) with the shorter side exactly `shorter`, aspect kept."""
    if width <= 0 or height <= 0:
        raise BadInputError(f"image has no pixels ({width}x{height})")
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, max(shorter, int(np.floor(height * scale + 0.5)))
    return max(shorter, int(np.floor(width * scale + 0.5))), shorter


def filter_weights(n_in: int, n_out: int, first: int = 0, count: int | None = None) -> np.ndarray:
    """Antialiased triangle-filter weights of output pixels first..first+count (of n_out) over
    n_in input pixels; each row sums to 1. Only the cropped rows are built, so a 20000-pixel
    wide image costs crop x 20000 weights, not 36000 x 20000."""
    ratio = n_in / n_out
    support = max(ratio, 1.0)
    count = n_out - first if count is None else count
    centres = (np.arange(first, first + count) + 0.5) * ratio
    positions = np.arange(n_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(positions[None, :] - centres[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


DEFAULT_SPEC = PreprocessSpec()
