"""Training-time augmentation, drawn and applied in batches on the device that trains.

The decoded training images are held once, as uint8, in an `ImageBank`: one N x 3 x H x W
tensor (in GPU memory when it fits, else pinned host memory; plain memory on a CPU). Each
image sits one pixel in from the top-left of the shared canvas, every other canvas pixel
filled with its mean colour. For each batch:

1. one `affine_grid` + `grid_sample` does the random-resized crop, the small rotation, both
   flips and the quarter turns at once (bilinear). Corners that the rotation uncovers get
   the image's mean colour (the fill, repeated past the canvas edge by border padding), not
   black, so they do not read as a lesion;
2. brightness, contrast and saturation jitter are all linear in the pixel values, so with the
   spec's normalisation they are one 3 x 3 colour matrix per image and one clamp.

Every random number is drawn on the training device from a torch.Generator seeded by
(seed, epoch, rank, batch index): a batch is the same whether or not the run was interrupted
and resumed, and no step waits for the host.

Only the trainer uses this room. Evaluation never does: it goes through the one
preprocessing spec (`dermmobile.preprocess`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dermmobile.preprocess import PreprocessSpec
from dermmobile.train_config import AugmentConfig

__all__ = ["AugmentConfig", "ImageBank", "augment_batch", "batch_generator", "downscale"]

# Longer side at most this multiple of the shorter one in the bank: a panorama would
# otherwise widen every image's canvas. Wider images are scaled down whole, never cut.
MAX_ASPECT = 2.0
# Pixels of fill colour around each image: border padding then repeats the fill, not the image's edge.
MARGIN = 1
# Keep the bank in GPU memory while it takes at most this share of the free memory.
DEVICE_SHARE = 0.25


def downscale(image: Image.Image, shorter: int) -> np.ndarray:
    """A uint8 HxWx3 copy whose shorter side is `shorter` (never upscaled) and whose longer side
    is at most MAX_ASPECT times that: the training cache."""
    width, height = image.size
    scale = min(shorter / min(width, height), shorter * MAX_ASPECT / max(width, height))
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


@dataclass
class ImageBank:
    """Decoded training images, uint8, each at (MARGIN, MARGIN) in one shared canvas."""

    pixels: torch.Tensor  # uint8 N x 3 x H x W
    sizes: torch.Tensor  # float32 N x 2: width and height of each image inside the canvas
    labels: torch.Tensor  # int64 N

    @classmethod
    def build(cls, images: list[np.ndarray], labels: list[int], landscape: bool) -> ImageBank:
        """`landscape`: store portrait images transposed, which narrows the canvas. Only valid
        when the augmentation draws flips and quarter turns (a transpose is one of those)."""
        if landscape:
            images = [np.ascontiguousarray(a.transpose(1, 0, 2)) if a.shape[0] > a.shape[1] else a for a in images]
        height = max(a.shape[0] for a in images) + 2 * MARGIN
        width = max(a.shape[1] for a in images) + 2 * MARGIN
        pixels = torch.empty((len(images), 3, height, width), dtype=torch.uint8)
        for i, array in enumerate(images):
            fill = np.round(array.reshape(-1, 3).mean(axis=0)).astype(np.uint8)  # the image's mean colour
            pixels[i] = torch.from_numpy(fill)[:, None, None]
            rows, cols = slice(MARGIN, MARGIN + array.shape[0]), slice(MARGIN, MARGIN + array.shape[1])
            pixels[i, :, rows, cols] = torch.tensor(array).permute(2, 0, 1)
        sizes = torch.tensor([[a.shape[1], a.shape[0]] for a in images], dtype=torch.float32)
        return cls(pixels, sizes, torch.as_tensor(labels, dtype=torch.int64))

    def place(self, device: torch.device) -> ImageBank:
        """On `device` when it fits (a share of free GPU memory), else pixels in pinned host memory."""
        if device.type == "cpu":
            return self
        small = {"sizes": self.sizes.to(device), "labels": self.labels.to(device)}
        fits = True
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            fits = self.pixels.numel() <= DEVICE_SHARE * free
        # Too big for the GPU: stays in host memory; `gather` pins each batch on its way over.
        return ImageBank(self.pixels.to(device) if fits else self.pixels, **small)

    def gather(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 pixels, sizes, labels) of `indices` (a CPU tensor, pinned for CUDA), on `device`; every
        copy is asynchronous, so the host never waits for the device here."""
        on_device = indices.to(device, non_blocking=True)
        if self.pixels.device.type == "cpu" and device.type != "cpu":
            pixels = self.pixels.index_select(0, indices).pin_memory().to(device, non_blocking=True)
        else:
            pixels = self.pixels.index_select(0, on_device)
        return pixels, self.sizes[on_device], self.labels[on_device]


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A small float32 constant on `device`, made once: building it per batch from a Python list
    would be a blocking host-to-device copy, which waits for everything queued on the GPU."""
    return torch.tensor(values, dtype=torch.float32).to(device)


def batch_generator(device: torch.device, seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """The generator for one batch's draws, a function of (seed, epoch, rank, batch) only."""
    mixed = np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(2, np.uint64)[0]
    generator = torch.Generator(device=device)
    generator.manual_seed(int(mixed) & ((1 << 63) - 1))
    return generator


def _crop_boxes(sizes: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop for a batch: 10 tries at a random area share and aspect
    ratio, the first that fits, else the centred square. Returns N x 4 (centre x, y, width, height)."""
    n = len(sizes)
    width, height = sizes[:, :1], sizes[:, 1:]
    u = torch.rand((n, 10, 4), generator=generator, device=sizes.device)
    area = width * height * (config.scale[0] + (config.scale[1] - config.scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits (0 if none)
    found = fits.any(dim=1, keepdim=True)
    side = torch.minimum(width, height)
    w = torch.where(found, w.gather(1, first), side)
    h = torch.where(found, h.gather(1, first), side)
    left = torch.where(found, u[..., 2].gather(1, first) * (width - w), (width - side) / 2)
    top = torch.where(found, u[..., 3].gather(1, first) * (height - h), (height - side) / 2)
    return torch.cat([left + w / 2, top + h / 2, w, h], dim=1)


def affine_theta(boxes: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor, turns: torch.Tensor,
                 sizes: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """N x 2 x 3 matrices for `affine_grid` (align_corners=False) mapping output coordinates to the canvas.

    Per image, in pixels: source = centre + R(angle) @ (box centre - centre + diag(w, h) / 2 @ T @ u), where
    u in [-1, 1]^2 spans the output, T is the quarter turn times the flips (signs +-1 in `flips`, N x 2),
    and the box was drawn in the frame of the image rotated by `angle` (radians), as PIL's rotate-then-crop.
    """
    quarter = turns.to(torch.float32) * (math.pi / 2)
    cos_k, sin_k = torch.cos(quarter).round(), torch.sin(quarter).round()
    turn = torch.stack([torch.stack([cos_k, -sin_k], 1), torch.stack([sin_k, cos_k], 1)], 1)  # N x 2 x 2
    local = (boxes[:, 2:, None] / 2) * turn * flips[:, None, :]  # diag(w, h) / 2 @ turn @ diag(flips)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    centre = sizes / 2
    linear = rotation @ local
    offset = MARGIN + centre + (rotation @ (boxes[:, :2] - centre)[:, :, None])[:, :, 0]
    to_unit = _constant((2.0 / canvas[1], 2.0 / canvas[0]), boxes.device)  # pixels -> [-1, 1] (x: W, y: H)
    return torch.cat([linear * to_unit[None, :, None], (offset * to_unit - 1)[:, :, None]], dim=2)


def _draw_geometry(sizes: torch.Tensor, config: AugmentConfig, generator: torch.Generator):
    n, device = len(sizes), sizes.device
    boxes = _crop_boxes(sizes, config, generator)
    u = torch.rand((n, 3), generator=generator, device=device)
    angles = (2 * u[:, 0] - 1) * math.radians(config.rotation)
    signs = torch.where(u[:, 1:] < 0.5, -1.0, 1.0)
    flips = torch.stack([signs[:, 0] if config.hflip else torch.ones(n, device=device),
                         signs[:, 1] if config.vflip else torch.ones(n, device=device)], 1)  # fmt: skip
    turns = torch.randint(0, 4, (n,), generator=generator, device=device)
    if not config.quarter_turns:
        turns = torch.zeros_like(turns)
    return boxes, angles, flips, turns


def _colour_matrices(values: torch.Tensor, spec: PreprocessSpec, config: AugmentConfig, generator: torch.Generator):
    """Per image (N x 3 x 3 matrix, N x 3 offset, lower and upper bounds) such that clamp(matrix @ pixel + offset)
    is brightness b, then contrast c around the image's mean grey, then saturation s around each pixel's grey,
    clipped to [0, 255] and normalised by the spec (all linear in the pixel, so they compose)."""
    n, device = len(values), values.device
    spread = _constant((config.brightness, config.contrast, config.saturation), device)
    b, c, s = (1 + (2 * torch.rand((n, 3), generator=generator, device=device) - 1) * spread).unbind(1)
    eye = torch.eye(3, device=device)
    saturation = s[:, None, None] * eye + ((1 - s) / 3)[:, None, None]  # s I + (1 - s) / 3 ones
    grey = values.mean(dim=(1, 2, 3))
    std, mean = _constant(tuple(spec.std), device), _constant(tuple(spec.mean), device)
    per_unit = 1 / (spec.scale * std)  # normalised = value * per_unit - mean / std
    matrix = (b * c)[:, None, None] * saturation * per_unit[None, :, None]
    offset = ((1 - c) * b * grey)[:, None] * per_unit - mean / std
    return matrix, offset, (-mean / std).view(1, 3, 1), ((spec.scale * per_unit) - mean / std).view(1, 3, 1)


def augment_batch(pixels: torch.Tensor, sizes: torch.Tensor, spec: PreprocessSpec,
                  config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """uint8 N x 3 x H x W canvases -> float32 N x 3 x crop x crop, augmented and normalised like the spec."""
    n = len(pixels)
    boxes, angles, flips, turns = _draw_geometry(sizes, config, generator)
    theta = affine_theta(boxes, angles, flips, turns, sizes, tuple(pixels.shape[-2:]))
    grid = F.affine_grid(theta, [n, 3, spec.crop, spec.crop], align_corners=False)
    values = F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    matrix, offset, low, high = _colour_matrices(values, spec, config, generator)
    out = torch.baddbmm(offset[:, :, None], matrix, values.view(n, 3, -1))
    return torch.clamp_(out, low, high).view(n, 3, spec.crop, spec.crop)
