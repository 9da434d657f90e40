"""Batched augmentation: the affine mapping against plain resizes, flips and turns; the fill; determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dermmobile.augment import ImageBank, affine_theta, augment_batch, batch_generator, downscale
from dermmobile.preprocess import PreprocessSpec
from dermmobile.train_config import AugmentConfig

CPU = torch.device("cpu")
STILL = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, vflip=False, quarter_turns=False, rotation=0.0,
                      brightness=0.0, contrast=0.0, saturation=0.0)  # fmt: skip


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _sample(bank: ImageBank, box, turns=0, flips=(1.0, 1.0), angle=0.0, size=(24, 24)) -> torch.Tensor:
    theta = affine_theta(torch.tensor([box], dtype=torch.float32), torch.tensor([angle]), torch.tensor([flips]),
                         torch.tensor([turns]), bank.sizes[:1], tuple(bank.pixels.shape[-2:]))  # fmt: skip
    grid = F.affine_grid(theta, [1, 3, *size], align_corners=False)
    return F.grid_sample(bank.pixels[:1].float(), grid, padding_mode="border", align_corners=False)


def test_a_whole_image_box_is_a_plain_bilinear_resize():
    image = _image(40, 60)
    bank = ImageBank.build([image, _image(30, 50, 1)], [0, 1], landscape=True)
    out = _sample(bank, (30.0, 20.0, 60.0, 40.0), size=(20, 30))
    expected = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(20, 30), mode="bilinear",
                             align_corners=False)  # fmt: skip
    assert (out - expected).abs().max() < 1e-3


def test_flips_and_quarter_turns_are_exact_pixel_permutations():
    bank = ImageBank.build([_image(40, 40)], [0], landscape=False)
    box = (20.0, 20.0, 40.0, 40.0)
    base = _sample(bank, box)
    assert (_sample(bank, box, flips=(-1.0, 1.0)) - base.flip(-1)).abs().max() < 1e-3
    assert (_sample(bank, box, flips=(1.0, -1.0)) - base.flip(-2)).abs().max() < 1e-3
    for turns in range(4):
        assert (_sample(bank, box, turns=turns) - torch.rot90(base, turns, (2, 3))).abs().max() < 1e-3


def test_rotation_fills_uncovered_corners_with_the_image_mean_colour():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 200  # mean colour 100
    bank = ImageBank.build([image], [0], landscape=False)
    out = _sample(bank, (20.0, 20.0, 40.0, 40.0), angle=np.pi / 4)
    assert out[0, :, 0, 0].tolist() == pytest.approx([100.0] * 3, abs=1.0)  # a corner outside the rotated image
    assert out[0, :, -1, -1].tolist() == pytest.approx([100.0] * 3, abs=1.0)


def test_the_bank_stores_portrait_images_transposed_and_pads_with_the_mean():
    portrait, landscape = _image(50, 30), _image(30, 40)
    bank = ImageBank.build([portrait, landscape], [3, 4], landscape=True)
    assert bank.sizes.tolist() == [[50.0, 30.0], [40.0, 30.0]]
    assert tuple(bank.pixels.shape) == (2, 3, 32, 52)  # 30 x 50 plus a 1-pixel margin on each side
    assert torch.equal(bank.pixels[0, :, 1:31, 1:51], torch.from_numpy(portrait.transpose(1, 0, 2)).permute(2, 0, 1))
    fill = np.round(landscape.reshape(-1, 3).mean(0))
    assert bank.pixels[1, :, 0, 0].tolist() == fill.tolist() and bank.pixels[1, :, -1, -1].tolist() == fill.tolist()
    assert bank.labels.tolist() == [3, 4]


def test_downscale_caps_the_shorter_side_and_the_aspect_ratio():
    from PIL import Image

    assert downscale(Image.new("RGB", (800, 400)), 256).shape == (256, 512, 3)
    assert downscale(Image.new("RGB", (2000, 400)), 256).shape == (102, 512, 3)  # 5:1: longer side capped at 2 x 256
    assert downscale(Image.new("RGB", (100, 80)), 256).shape == (80, 100, 3)  # never upscaled


def test_batches_are_a_function_of_seed_epoch_rank_and_batch_only():
    spec = PreprocessSpec(resize=36, crop=32)
    bank = ImageBank.build([_image(36, 48, i) for i in range(4)], [0, 1, 2, 3], landscape=True)
    pixels, sizes, _ = bank.gather(torch.arange(4), CPU)

    def draw(*key):
        return augment_batch(pixels, sizes, spec, AugmentConfig(), batch_generator(CPU, *key))

    first = draw(0, 1, 0, 0)
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, draw(0, 1, 0, 0))
    for other in [(1, 1, 0, 0), (0, 2, 0, 0), (0, 1, 1, 0), (0, 1, 0, 1)]:
        assert not torch.equal(first, draw(*other)), other


def test_without_jitter_the_output_is_the_spec_normalisation_of_the_pixels():
    spec = PreprocessSpec(resize=36, crop=32)
    image = _image(32, 32)
    bank = ImageBank.build([image], [0], landscape=False)
    pixels, sizes, _ = bank.gather(torch.arange(1), CPU)
    out = augment_batch(pixels, sizes, spec, STILL, batch_generator(CPU, 0, 0, 0, 0))
    mean, std = np.asarray(spec.mean)[:, None, None], np.asarray(spec.std)[:, None, None]
    expected = (image.transpose(2, 0, 1) / 255.0 - mean) / std
    assert np.abs(out[0].numpy() - expected).max() < 1e-4


def test_colour_jitter_matches_brightness_contrast_saturation_applied_in_turn():
    spec = PreprocessSpec(resize=36, crop=32)
    image = _image(32, 32, 3)
    bank = ImageBank.build([image], [0], landscape=False)
    pixels, sizes, _ = bank.gather(torch.arange(1), CPU)
    config = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, vflip=False, quarter_turns=False, rotation=0.0)
    out = augment_batch(pixels, sizes, spec, config, batch_generator(CPU, 5, 0, 0, 0))
    # The same draws, replayed: the geometry consumes its numbers first, then the three factors.
    generator = batch_generator(CPU, 5, 0, 0, 0)
    torch.rand((1, 10, 4), generator=generator), torch.rand((1, 3), generator=generator)
    torch.randint(0, 4, (1,), generator=generator)
    b, c, s = (1 + (2 * torch.rand((1, 3), generator=generator) - 1) * 0.2)[0].tolist()
    values = image.astype(np.float64).transpose(2, 0, 1) * b
    values = (values - values.mean()) * c + values.mean()
    grey = values.mean(axis=0, keepdims=True)
    values = np.clip((values - grey) * s + grey, 0, 255)
    expected = (values / 255.0 - np.asarray(spec.mean)[:, None, None]) / np.asarray(spec.std)[:, None, None]
    assert np.abs(out[0].numpy() - expected).max() < 1e-4
