"""dermmobile-preprocess-v2's resize written out in numpy, operation for operation.

`dermmobile.preprocess` runs Pillow's C code (src/libImaging/Resample.c, BILINEAR,
8 bits per channel); this module is the same arithmetic as a reader can check it
against the spec's step 2, banded: each output pixel touches only the inputs inside
its filter support. The tests prove Pillow and this agree bit for bit on many sizes,
so the spec is a definition, not "whatever this Pillow version does". The Java
(android_demo/preprocess-core) and JavaScript (web_demo/preprocess.js) ports follow
this file line by line. Slow (Python-level loops over the filter taps): tests only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2
HALF = 1 << (PRECISION_BITS - 1)  # rounding offset added before the shift


@dataclass(frozen=True)
class Coefficients:
    """Fixed-point filter taps of one axis: output o reads inputs start[o] .. start[o] + count[o] - 1."""

    start: np.ndarray  # int64, per output pixel
    count: np.ndarray  # int64, per output pixel
    weights: np.ndarray  # int64 out x ksize; taps past count[o] are 0


def bilinear_coefficients(n_in: int, n_out: int) -> Coefficients:
    """precompute_coeffs + normalize_coeffs_8bpc of Resample.c for the BILINEAR filter."""
    # (double)(in1 - in0) / outSize with the box (0, 0, W, H) passed as C floats: in1 is
    # float32(n_in), which is n_in itself below 2**24 pixels.
    scale = float(np.float32(n_in)) / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # BILINEAR's support is 1
    ksize = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(n_out) + 0.5) * scale
    # C's (int) cast truncates toward zero; np.trunc then astype does the same.
    start = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    stop = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), n_in)
    count = stop - start
    inverse = 1.0 / filterscale
    taps = np.arange(ksize)
    # ((x + xmin) - center + 0.5) * ss: int + int, then minus a double, plus 0.5, times ss.
    distance = ((taps[None, :] + start[:, None]) - centers[:, None] + 0.5) * inverse
    weights = np.where(taps[None, :] < count[:, None], np.maximum(0.0, 1.0 - np.abs(distance)), 0.0)
    total = np.zeros(n_out)
    for tap in range(ksize):  # left to right, one addition at a time, as the C loop sums
        total += weights[:, tap]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    fixed = np.trunc(0.5 + weights * (1 << PRECISION_BITS)).astype(np.int64)
    return Coefficients(start, count, fixed)


def _pass(image: np.ndarray, coefficients: Coefficients, axis: int) -> np.ndarray:
    """One 8-bit pass along `axis` (1: horizontal, 0: vertical) of an H x W x C uint8 image."""
    n_in = image.shape[axis]
    source = image.astype(np.int64)
    total = np.full((len(coefficients.start), *np.delete(image.shape, axis)), HALF, dtype=np.int64)
    total = np.moveaxis(total, 0, axis)
    for tap in range(coefficients.weights.shape[1]):
        index = np.minimum(coefficients.start + tap, n_in - 1)  # a tap past count has weight 0
        weight = coefficients.weights[:, tap]
        shape = [1, 1, 1]
        shape[axis] = -1
        total += np.take(source, index, axis=axis) * weight.reshape(shape)
    return np.clip(total >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_bilinear(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """H x W x 3 uint8 -> out_h x out_w x 3 uint8: horizontal pass, then vertical, as Resample.c."""
    if rgb.ndim != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x C uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    horizontal = _pass(rgb, bilinear_coefficients(width, out_w), axis=1)
    return _pass(horizontal, bilinear_coefficients(height, out_h), axis=0)
