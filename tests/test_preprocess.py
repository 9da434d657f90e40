"""The one preprocessing spec: JSON round trip, resize maths, normalization, layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dermmobile.errors import BadInputError
from dermmobile.preprocess import DEFAULT_SPEC, PreprocessSpec, filter_weights, resized_size


def test_spec_round_trips_through_json():
    spec = PreprocessSpec(resize=160, crop=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert PreprocessSpec.from_dict(json.loads(spec.to_json())) == spec
    assert DEFAULT_SPEC.to_dict()["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize(
    "bad",
    [{"interpolation": "bicubic"}, {"crop": 300}, {"std": (0, 1, 1)}, {"mean": (1, 2)}],
)
def test_invalid_specs_are_refused(bad):
    with pytest.raises(BadInputError):
        PreprocessSpec(**bad)


def test_unknown_fields_and_algorithms_are_refused():
    with pytest.raises(BadInputError, match="unknown preprocessing fields"):
        PreprocessSpec.from_dict({"resize": 10, "gamma": 2})
    with pytest.raises(BadInputError, match="not known"):
        PreprocessSpec.from_dict({"algorithm": "v2"})


def test_resized_size_keeps_shorter_side_exact():
    assert resized_size(640, 480, 256) == (341, 256)
    assert resized_size(480, 640, 256) == (256, 341)
    assert resized_size(1, 1, 36) == (36, 36)
    assert resized_size(20000, 20, 36) == (36000, 36)


def test_filter_weights_rows_sum_to_one_and_downsample_by_two_is_pair_average():
    weights = filter_weights(8, 4)
    assert np.allclose(weights.sum(axis=1), 1)
    # support 2 around centre 1.0: inputs 0 and 1 at distance 0.5 -> 0.75 each, input 2 at 1.5 -> 0.25
    assert np.allclose(weights[0, :3], np.array([0.75, 0.75, 0.25]) / 1.75)
    assert np.allclose(filter_weights(8, 4, 1, 2), weights[1:3])


def test_pixels_close_to_pillow_bilinear():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    spec = PreprocessSpec(resize=64, crop=56)
    width, height = resized_size(90, 120, 64)
    pillow = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.float64)
    top, left = (height - 56) // 2, (width - 56) // 2
    ours = spec.pixels(image)
    assert np.abs(pillow[top : top + 56, left : left + 56] - ours).max() <= 2.0  # Pillow rounds to uint8 between passes


def test_normalization_and_layout():
    spec = PreprocessSpec(resize=4, crop=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 51
    chw = spec.array(image)
    assert chw.shape == (3, 4, 4) and chw.dtype == np.float32
    assert np.allclose(chw[:, 0, 0], [1.0, -1.0, 0.2])
    assert np.array_equal(spec.array(image, "NHWC"), chw.transpose(1, 2, 0))
