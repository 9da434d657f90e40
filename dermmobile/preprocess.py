"""The one preprocessing spec: image file -> normalized float32 tensor.

Training evaluation, calibration, export checks, benchmarking, prediction, the Android
app (android_demo/preprocess-core, Java) and the web page (web_demo/preprocess.js) all
use this and nothing else, so an artifact sees on a phone what it saw at export time.
Every path calls the same three methods: `spec.decode(path)` (file -> upright 8-bit
RGB, reduced as the spec says), `spec.array(rgb, layout)` (RGB -> tensor) and
`spec.load(path, layout)` (both).

This docstring is the normative text. Two algorithms exist; a spec names its own.

dermmobile-preprocess-v2 (the default for new checkpoints)
----------------------------------------------------------
1. Decode to 8-bit RGB, EXIF orientation applied, with `dermmobile.data.decode_image`.
   A JPEG is decoded reduced in the DCT domain (libjpeg scaling: Pillow's `draft`,
   Android's `inSampleSize`) by f = the largest of 8, 4, 2, 1 with
   floor(min(W, H) / f) >= resize, W x H its stored size; the decoded size is
   (ceil(W / f), ceil(H / f)) (before the EXIF rotation). Other formats decode at full
   size. Browsers have no reduced decode: the web page decodes a JPEG fully and so
   differs from Python and Android in this step only (`reduced_decode_factor` says f).
   The threshold is `resize`, not 2 x resize: on sd198-27 both kept held-out top-1
   within noise of v1's, and `resize` halves decode + preprocess of the data set's
   photos (benchmarks/results/preprocess-spec-*).
2. Resize the whole decoded image to (out_w, out_h), the shorter side exactly `resize`:
   s = resize / min(W, H), the other side round_half_up(side * s) (as v1). The filter
   is Pillow's BILINEAR (src/libImaging/Resample.c), per axis of n_in -> n_out pixels,
   all in IEEE double unless said:
       scale = float32(n_in) / n_out; filterscale = max(scale, 1); support = filterscale
       (float32: Pillow passes the sizes as C floats; it is n_in itself below 2**24)
       for output o: center = (o + 0.5) * scale
           xmin = max(0, trunc(center - support + 0.5))
           xmax = min(n_in, trunc(center + support + 0.5))
           w[x] = max(0, 1 - |(xmin + x - center + 0.5) * (1 / filterscale)|), x < xmax - xmin
           ww = w[0] + w[1] + ... (left to right); w[x] = w[x] / ww unless ww == 0
           k[x] = trunc(0.5 + w[x] * 2**22)                         (int32)
           value = (2**21 + sum_x pixel[xmin + x] * k[x]) >> 22, clipped to 0..255
   Horizontal pass first (over every row), then the vertical pass over its uint8
   output, always in that order; integer arithmetic, rounded and clipped to uint8
   after each pass. Python runs Pillow's C code one axis per call (Pillow 13 may
   otherwise reorder the passes, see `_resize_crop`); `dermmobile.preprocess_reference`
   is this paragraph in numpy, and the tests prove the two equal.
3. Centre crop `crop` x `crop`: left = (out_w - crop) // 2, top = (out_h - crop) // 2.
   Every output pixel depends only on its own coefficients, so Java and JavaScript
   compute only the crop window and get the same numbers.
4. Normalise through a 256-entry table per channel c:
   table[c][v] = float32(((v / scale) - mean[c]) / std[c]), computed in double and
   rounded once to float32; laid out CHW (NCHW with the batch axis) or HWC (NHWC).

dermmobile-preprocess-v1 (manifests and checkpoints that say so; slow, kept exact)
----------------------------------------------------------------------------------
1. Decode as above but always at full size.
2. Resize the same output size, only the centre crop window computed, with a float64
   antialiased triangle filter: ratio r = n_in / n_out, support = max(r, 1); output o
   has centre c = (o + 0.5) * r; input i gets weight max(0, 1 - |i + 0.5 - c| / support),
   weights divided by their sum; rows then columns, no rounding between passes.
3. value = (pixel / scale - mean[c]) / std[c] in float64, then float32; CHW or HWC.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dermmobile.errors import BadInputError

if TYPE_CHECKING:
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear",)
ALGORITHM_V1 = "dermmobile-preprocess-v1"
ALGORITHM_V2 = "dermmobile-preprocess-v2"
ALGORITHMS = (ALGORITHM_V1, ALGORITHM_V2)
# The DCT-domain reductions libjpeg (and so Pillow and Android) can decode a JPEG at.
DECODE_FACTORS = (8, 4, 2, 1)
# Larger sizes are no phone model's input; the cap keeps a hostile manifest from asking
# for a 7 TiB tensor (issue 15).
MAX_SIZE = 4096
LAYOUTS = ("NCHW", "NHWC")


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
    algorithm: str = field(default=ALGORITHM_V2)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise BadInputError(f"preprocessing algorithm {self.algorithm!r} is not known to this version; known: {ALGORITHMS}")
        if self.interpolation not in INTERPOLATIONS:
            raise BadInputError(f"interpolation {self.interpolation!r} is not supported; valid: {', '.join(INTERPOLATIONS)}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInputError(f"preprocessing {name} must be an integer number of pixels, got {value!r}")
        if not (0 < self.crop <= self.resize <= MAX_SIZE):
            raise BadInputError(f"need 0 < crop <= resize <= {MAX_SIZE} pixels, got crop {self.crop} and resize {self.resize}")
        numbers = (*self.mean, *self.std, self.scale)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(_finite_number(v) for v in numbers):
            raise BadInputError(
                f"mean and std need three finite numbers each and scale one, got {self.mean}, {self.std}, {self.scale!r}"
            )
        if min(self.std) <= 0 or self.scale <= 0:
            raise BadInputError(f"std and scale must be positive, got std {self.std} and scale {self.scale}")
        if self.color != "RGB" or self.exif_transpose is not True:
            raise BadInputError("only RGB colour order with EXIF transpose is implemented")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        """Read a manifest's or checkpoint's spec. One without `algorithm` is v1: every
        dermmobile before v2 wrote v1, and reading an old file as v2 would change it."""
        if not isinstance(data, dict):
            raise BadInputError(f"preprocessing must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise BadInputError(f"unknown preprocessing fields {sorted(unknown)}; known: {sorted(known)}")
        values = {"algorithm": ALGORITHM_V1, **data}
        for key in ("mean", "std"):
            if key in values:
                if not isinstance(values[key], list | tuple) or not all(_finite_number(v) for v in values[key]):
                    raise BadInputError(f"preprocessing {key} must be a list of three numbers, got {values[key]!r}")
                values[key] = tuple(float(v) for v in values[key])
        if "scale" in values and _finite_number(values["scale"]):
            values["scale"] = float(values["scale"])
        return cls(**values)

    # -- the one API: decode, array, load ----------------------------------------------------
    @property
    def decode_min_side(self) -> int | None:
        """JPEG reduced decode keeps the shorter side >= this (v2: `resize`); None: full decode (v1)."""
        return self.resize if self.algorithm == ALGORITHM_V2 else None

    def decode_factor(self, width: int, height: int) -> int:
        """The reduction f a JPEG of stored size width x height is decoded at (1 for v1)."""
        minimum = self.decode_min_side
        return 1 if minimum is None else reduced_decode_factor(width, height, minimum)

    def decode(self, path: Path) -> Image.Image:
        """An image file as upright 8-bit RGB (a Pillow image; `np.asarray` gives H x W x 3 uint8),
        reduced as this spec's step 1 says. Raises BadImageError naming the problem."""
        from dermmobile.data import decode_image

        return decode_image(path, min_side=self.decode_min_side)

    def array(self, rgb: np.ndarray | Image.Image, layout: str = "NCHW") -> np.ndarray:
        """Decoded RGB (H x W x 3 uint8, or a Pillow RGB image) -> float32 CHW, or HWC for NHWC."""
        layout = layout.upper()
        if layout not in LAYOUTS:
            raise BadInputError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.algorithm == ALGORITHM_V1:
            values = ((self.pixels(rgb) / self.scale - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)
            return values if layout == "NHWC" else np.ascontiguousarray(values.transpose(2, 0, 1))
        pixels = self.pixels(rgb)
        # One 1-D take per channel: 3x faster than indexing the 256 x 3 table with (pixels, channel) arrays
        # (0.31 against 0.85 ms per 224 x 224 image here), which made step 4 cost as much as steps 2-3.
        planes = np.empty((3, *pixels.shape[:2]), np.float32)
        for channel in range(3):
            np.take(self._channel_tables[channel], pixels[:, :, channel], out=planes[channel])
        return np.ascontiguousarray(planes.transpose(1, 2, 0)) if layout == "NHWC" else planes

    def load(self, path: Path, layout: str = "NCHW") -> np.ndarray:
        """decode + array: what every path that starts from a file calls."""
        return self.array(self.decode(path), layout)

    # -- the steps ---------------------------------------------------------------------------
    def pixels(self, rgb: np.ndarray | Image.Image) -> np.ndarray:
        """Resized centre crop, crop x crop x 3 (v2: uint8; v1: float64 in [0, 255])."""
        from PIL import Image

        if isinstance(rgb, Image.Image):
            if rgb.mode != "RGB":
                raise BadInputError(f"expected an RGB image, got mode {rgb.mode}; decode with spec.decode")
            width, height = rgb.size
        else:
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise BadInputError(f"expected an H x W x 3 uint8 RGB array, got shape {rgb.shape} of {rgb.dtype}")
            height, width = rgb.shape[:2]
        out_w, out_h = resized_size(width, height, self.resize)
        left, top = (out_w - self.crop) // 2, (out_h - self.crop) // 2
        if self.algorithm == ALGORITHM_V1:
            return _v1_pixels(np.asarray(rgb), out_w, out_h, left, top, self.crop)
        image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
        return np.asarray(_resize_crop(image, out_w, out_h, left, top, self.crop))

    @cached_property
    def _table(self) -> np.ndarray:
        """256 x 3 float32: step 4's table, computed in float64 and rounded once."""
        levels = np.arange(256, dtype=np.float64)[:, None]
        return ((levels / self.scale - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    @cached_property
    def _channel_tables(self) -> np.ndarray:
        """3 x 256: `_table` per channel, contiguous for np.take."""
        return np.ascontiguousarray(self._table.T)


def _resize_crop(image: Image.Image, out_w: int, out_h: int, left: int, top: int, crop: int) -> Image.Image:
    """v2 steps 2 and 3 with Pillow, one axis per call so the pass order is the spec's.

    A two-axis `Image.resize` lets Pillow choose the order: Pillow 13 runs the vertical
    pass first when the height shrinks much more than the width (python-pillow/Pillow
    #9549), which moves some pixels by one level. A one-axis call runs one pass only, so
    horizontal-then-vertical holds on every Pillow version. The vertical pass reads only
    the crop's columns: its taps do not depend on the width, so the values are the same.
    """
    from PIL import Image

    width, height = image.size
    if out_w != width:  # a same-size pass is the identity (tap weights 1 and 0), skipped as Pillow does
        image = image.resize((out_w, height), Image.Resampling.BILINEAR)
    image = image.crop((left, 0, left + crop, height))
    if out_h != height:
        image = image.resize((crop, out_h), Image.Resampling.BILINEAR)
    return image.crop((0, top, crop, top + crop))


def _finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def reduced_decode_factor(width: int, height: int, min_side: int) -> int:
    """The largest f of 8, 4, 2, 1 with floor(min(width, height) / f) >= min_side (1 if none)."""
    shorter = min(width, height)
    return next(f for f in DECODE_FACTORS if f == 1 or shorter // f >= min_side)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Output (width, height) with the shorter side exactly `shorter`, aspect kept."""
    if width <= 0 or height <= 0:
        raise BadInputError(f"image has no pixels ({width}x{height})")
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, max(shorter, int(np.floor(height * scale + 0.5)))
    return max(shorter, int(np.floor(width * scale + 0.5))), shorter


# -- v1: the float64 dense filter, kept exact for old artifacts ---------------------------------


def _v1_pixels(rgb: np.ndarray, out_w: int, out_h: int, left: int, top: int, crop: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    rows = filter_weights(height, out_h, top, crop)
    cols = filter_weights(width, out_w, left, crop)
    # Rows then columns, one channel at a time: two small matrix products each. Each channel
    # becomes float64 on its own (the same contiguous matrix numpy made of a float64 copy of
    # the whole image, so the same products), which keeps v1's peak memory a third lower.
    return np.stack([rows @ rgb[:, :, c].astype(np.float64) @ cols.T for c in range(3)], axis=-1)


def filter_weights(n_in: int, n_out: int, first: int = 0, count: int | None = None) -> np.ndarray:
    """v1's antialiased triangle-filter weights of output pixels first..first+count (of n_out)
    over n_in input pixels; each row sums to 1. Only the cropped rows are built, so a
    20000-pixel wide image costs crop x 20000 weights, not 36000 x 20000."""
    ratio = n_in / n_out
    support = max(ratio, 1.0)
    count = n_out - first if count is None else count
    centres = (np.arange(first, first + count) + 0.5) * ratio
    positions = np.arange(n_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(positions[None, :] - centres[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


DEFAULT_SPEC = PreprocessSpec()
