"""The one preprocessing spec: JSON round trip, v2's definition against Pillow, reduced decode, v1 kept exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dermmobile.errors import BadInputError
from dermmobile.preprocess import (
    ALGORITHM_V1,
    ALGORITHM_V2,
    DEFAULT_SPEC,
    PreprocessSpec,
    filter_weights,
    reduced_decode_factor,
    resized_size,
)
from dermmobile.preprocess_reference import bilinear_coefficients, resize_bilinear

V1 = PreprocessSpec(resize=64, crop=56, algorithm=ALGORITHM_V1)
V2 = PreprocessSpec(resize=64, crop=56)


def _random_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- the spec as data ---------------------------------------------------------------------------


def test_spec_round_trips_through_json_and_defaults_to_v2():
    spec = PreprocessSpec(resize=160, crop=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert spec.algorithm == ALGORITHM_V2 == DEFAULT_SPEC.algorithm
    assert PreprocessSpec.from_dict(json.loads(spec.to_json())) == spec
    assert PreprocessSpec.from_dict(V1.to_dict()) == V1
    assert DEFAULT_SPEC.to_dict()["mean"] == [0.485, 0.456, 0.406]


def test_a_dict_without_algorithm_is_v1():
    """Every dermmobile before v2 wrote v1; reading an old file as v2 would change its inputs."""
    old = {k: v for k, v in DEFAULT_SPEC.to_dict().items() if k != "algorithm"}
    assert PreprocessSpec.from_dict(old).algorithm == ALGORITHM_V1


@pytest.mark.parametrize(
    "bad",
    [
        {"interpolation": "bicubic"},
        {"crop": 300},
        {"std": (0, 1, 1)},
        {"mean": (1, 2)},
        {"resize": 10**6, "crop": 224},
        {"resize": 0, "crop": 0},
        {"resize": 256.0},
        {"crop": True},
        {"mean": (float("nan"), 0.5, 0.5)},
        {"std": (1e400, 1, 1)},
        {"scale": 0.0},
        {"algorithm": "dermmobile-preprocess-v9"},
    ],
)
def test_invalid_specs_are_refused(bad):
    with pytest.raises(BadInputError):
        PreprocessSpec(**bad)


def test_unknown_fields_algorithms_and_types_are_refused():
    with pytest.raises(BadInputError, match="unknown preprocessing fields"):
        PreprocessSpec.from_dict({"resize": 10, "gamma": 2})
    with pytest.raises(BadInputError, match="not known"):
        PreprocessSpec.from_dict({"algorithm": "v2"})
    with pytest.raises(BadInputError, match="mean"):
        PreprocessSpec.from_dict({"mean": "0.5"})
    with pytest.raises(BadInputError, match="JSON object"):
        PreprocessSpec.from_dict(["resize", 256])


def test_resized_size_keeps_shorter_side_exact():
    assert resized_size(640, 480, 256) == (341, 256)
    assert resized_size(480, 640, 256) == (256, 341)
    assert resized_size(1, 1, 36) == (36, 36)
    assert resized_size(20000, 20, 36) == (36000, 36)


# -- v2 step 1: which reduction a JPEG is decoded at --------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "factor"),
    [
        (4032, 3024, 8),  # 12 MP phone photo: 3024 // 8 = 378 >= 256
        (3024, 4032, 8),  # the same photo stored portrait
        (768, 529, 2),  # an sd198-27 photo: 529 // 2 = 264, 529 // 4 = 132
        (2047, 2047, 4),  # 2047 // 8 = 255 < 256
        (2048, 2048, 8),
        (512, 9000, 2),
        (511, 511, 1),
        (100, 100, 1),  # smaller than resize: never reduced
        (1, 1, 1),
    ],
)
def test_reduced_decode_factor(width, height, factor):
    assert reduced_decode_factor(width, height, 256) == factor
    assert DEFAULT_SPEC.decode_factor(width, height) == factor
    assert PreprocessSpec(algorithm=ALGORITHM_V1).decode_factor(width, height) == 1


# -- v2 step 2: Pillow equals the numpy reference, bit for bit ------------------------------------

EDGE_SIZES = [
    (1, 1, 1, 1),
    (1, 1, 7, 5),  # one pixel, upscaled
    (3, 2, 1, 1),  # to one pixel
    (5000, 3, 7, 2),  # huge downscale ratio on one axis
    (7, 2, 5000, 3),  # huge upscale ratio
    (2, 1, 300, 2),
    (50, 5000, 40, 100),  # tall: Pillow 13 alone would run the vertical pass first here
    (83, 244, 201, 1),
    (20, 20, 40, 10),  # width up, height down: another case Pillow 13 reorders
    (37, 91, 64, 157),
    (101, 99, 64, 63),
    (768, 529, 371, 256),  # an sd198-27 photo at the default spec
    (384, 265, 371, 256),  # the same photo decoded at 1/2
    (504, 378, 341, 256),  # a 12 MP JPEG decoded at 1/8
]


def _pillow_v2(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The whole resized image the way preprocess does it (one axis per Pillow call)."""
    from dermmobile.preprocess import _resize_crop

    crop = min(out_w, out_h)
    left, top = (out_w - crop) // 2, (out_h - crop) // 2
    return np.asarray(_resize_crop(Image.fromarray(rgb), out_w, out_h, left, top, crop)), (left, top, crop)


@pytest.mark.parametrize(("width", "height", "out_w", "out_h"), EDGE_SIZES)
def test_pillow_equals_reference_on_edge_sizes(width, height, out_w, out_h):
    rgb = _random_rgb(width, height, seed=width * 7 + height)
    ours, (left, top, crop) = _pillow_v2(rgb, out_w, out_h)
    reference = resize_bilinear(rgb, out_w, out_h)
    np.testing.assert_array_equal(ours, reference[top : top + crop, left : left + crop])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    out_w=st.integers(1, 400),
    out_h=st.integers(1, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_pillow_equals_reference_on_random_sizes(width, height, out_w, out_h, seed):
    rgb = _random_rgb(width, height, seed)
    ours, (left, top, crop) = _pillow_v2(rgb, out_w, out_h)
    np.testing.assert_array_equal(ours, resize_bilinear(rgb, out_w, out_h)[top : top + crop, left : left + crop])


def test_reference_coefficients_follow_resample_c():
    # 8 -> 4: scale 2, support 2; output 0 has centre 1.0, inputs 0..2 at distances 0.5, 0.5, 1.5
    coefficients = bilinear_coefficients(8, 4)
    assert coefficients.start[0] == 0 and coefficients.count[0] == 3
    raw = np.array([0.75, 0.75, 0.25]) / 1.75
    assert list(coefficients.weights[0, :3]) == [int(0.5 + w * 2**22) for w in raw]
    # a same-size axis is the identity: taps (1, 0)
    same = bilinear_coefficients(5, 5)
    assert (same.weights[:, 0] == 2**22).all() and (same.weights[:, 1:] == 0).all()


def test_two_axis_pillow_call_is_not_the_definition():
    """Why preprocess calls Pillow one axis at a time: with both axes in one call Pillow 13
    may run the vertical pass first (and get some pixels one level off the definition)."""
    rgb = _random_rgb(20, 20, seed=3)
    reference = resize_bilinear(rgb, 40, 10)
    one_call = np.asarray(Image.fromarray(rgb).resize((40, 10), Image.Resampling.BILINEAR))
    if np.array_equal(one_call, reference):
        pytest.skip("this Pillow runs horizontal first in one call too (Pillow < 13)")
    assert np.abs(one_call.astype(int) - reference).max() == 1


# -- v2 through the spec's API ----------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(90, 120), (120, 90), (64, 64), (5, 7), (640, 64), (1, 1)])
def test_v2_pixels_are_the_reference_crop(width, height):
    rgb = _random_rgb(width, height, seed=width + height)
    out_w, out_h = resized_size(width, height, V2.resize)
    left, top = (out_w - V2.crop) // 2, (out_h - V2.crop) // 2
    expected = resize_bilinear(rgb, out_w, out_h)[top : top + V2.crop, left : left + V2.crop]
    np.testing.assert_array_equal(V2.pixels(rgb), expected)
    np.testing.assert_array_equal(V2.pixels(Image.fromarray(rgb)), expected)  # a Pillow image is read the same


def test_v2_normalisation_is_a_float64_table_rounded_once():
    spec = PreprocessSpec(resize=4, crop=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 51
    chw = spec.array(image)
    assert chw.shape == (3, 4, 4) and chw.dtype == np.float32
    assert np.allclose(chw[:, 0, 0], [1.0, -1.0, 0.2])
    assert np.array_equal(spec.array(image, "NHWC"), chw.transpose(1, 2, 0))
    every_level = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(16, 16, 3)
    spec = PreprocessSpec(resize=16, crop=16)
    for c in range(3):
        expected = np.float32([(v / 255 - spec.mean[c]) / spec.std[c] for v in range(256)]).reshape(16, 16)
        np.testing.assert_array_equal(spec.array(every_level)[c], expected)
    with pytest.raises(BadInputError, match="layout"):
        spec.array(every_level, "NWHC")


def test_v2_refuses_what_is_not_rgb():
    with pytest.raises(BadInputError, match="uint8"):
        V2.array(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(BadInputError, match="mode"):
        V2.array(Image.new("L", (8, 8)))


# -- v1 stays what it was -------------------------------------------------------------------------


def test_v1_filter_weights_rows_sum_to_one_and_downsample_by_two_is_pair_average():
    weights = filter_weights(8, 4)
    assert np.allclose(weights.sum(axis=1), 1)
    # support 2 around centre 1.0: inputs 0 and 1 at distance 0.5 -> 0.75 each, input 2 at 1.5 -> 0.25
    assert np.allclose(weights[0, :3], np.array([0.75, 0.75, 0.25]) / 1.75)
    assert np.allclose(filter_weights(8, 4, 1, 2), weights[1:3])


def test_v1_is_the_float64_filter_and_close_to_v2():
    rgb = _random_rgb(90, 120)
    out_w, out_h = resized_size(90, 120, 64)
    top, left = (out_h - 56) // 2, (out_w - 56) // 2
    rows, cols = filter_weights(120, out_h, top, 56), filter_weights(90, out_w, left, 56)
    expected = np.stack([rows @ rgb[:, :, c].astype(np.float64) @ cols.T for c in range(3)], axis=-1)
    v1 = V1.pixels(rgb)
    assert v1.dtype == np.float64
    np.testing.assert_array_equal(v1, expected)
    np.testing.assert_array_equal(
        V1.array(rgb), ((expected / 255 - np.asarray(V1.mean)) / np.asarray(V1.std)).astype(np.float32).transpose(2, 0, 1)
    )
    # Same filter, v2 rounds to 8 bits after each pass: at most about a level apart.
    assert np.abs(V2.pixels(rgb).astype(np.float64) - v1).max() <= 1.5
