"""Weight rounding that compensates its own error (GPTQ), on each toolchain's int8 grid.

Why: int8 weights, not activations, are what most of the error of a fine-tuned EfficientNet-Lite0
comes from (bias_correction.py: 4.6 points of agreement against 1.8). Rounding every weight to the
nearest grid point treats each weight alone; GPTQ (Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", after Optimal Brain
Quantization) rounds the weights of a layer one input at a time and moves the weights not yet
rounded so that the layer's output on real inputs changes least: it minimises
`E||(W_int8 - W) x||^2` over the calibration images, with `H = E[x x^T]` of the layer's inputs
(im2col patches for a convolution).

How it reaches every toolchain unchanged: the weights written back are already on the grid the
toolchain will compute (symmetric per output channel, `scale = 2 max|W| / (qmax - qmin)`, the
same `quantize_weight` bias correction uses), and each channel keeps its largest weight, so the
toolchain's own min/max observer finds the same scale and its rounding is exact. A channel where
that does not hold afterwards is rounded to nearest instead (checked, never assumed). The mean
shift the new weights add on the calibration images is taken out of the bias, exactly (it is
bias correction, computed from the mean patch). Batch norm is folded first, as the toolchains do.
Inputs come from the float model (not the partly quantized one): one pass gathers every layer's `H`,
kept for the export's other targets and fallback attempts (round_weights's `statistics`).
"""

from __future__ import annotations

import numpy as np

from dermmobile.quantization.bias_correction import (
    WeightRange,
    fold_batch_norms,
    grid_of,
    quantize_weight,
    quantized_layers,
    run_hooked,
)

DAMPING = 0.01  # share of the mean diagonal of H added to it (GPTQ's default): keeps its inverse stable


def round_weights(model, calibration: np.ndarray, weight_range: WeightRange, float_layers=frozenset(),
                  correct_mean: bool = True, batch: int = 16, statistics: dict | None = None):  # fmt: skip
    """A copy of `model` with batch norms folded and every quantized layer's weights on their int8 grid by GPTQ
    (`weight_range`: one grid, or each layer's, bias_correction.WeightRange).

    statistics: where each layer's input statistics are kept between calls for the same model and calibration
    images (the exporter keeps one per plan): they come from the float model, so every target and every fallback
    attempt needs the same ones, and gathering them is most of GPTQ's time (26 of 35 s for Lite0 on 128 photos,
    2-core AMD EPYC). Gathered for every layer the first time, whatever is left float then.

    Returns (model, record): record counts the layers rounded by GPTQ, and the channels (if any) that fell
    back to nearest rounding."""
    import torch

    model = fold_batch_norms(model, torch.from_numpy(np.ascontiguousarray(calibration[:1], dtype=np.float32)))
    layers = quantized_layers(model, float_layers)
    stats = {} if statistics is None else statistics
    missing = {name: module for name, module in quantized_layers(model).items() if name not in stats}
    if any(name in missing for name in layers):
        fresh = {name: _InputStats() for name in missing}
        run_hooked(model, calibration, [module.register_forward_hook(_gather(module, fresh[name]))
                                        for name, module in missing.items()], batch)  # fmt: skip
        stats.update(fresh)
    record = {"layers": 0, "nearest_channels": 0, "skipped": []}
    with torch.no_grad():
        for name, module in layers.items():
            stat = stats[name]
            if stat.count == 0:
                if stat.unsupported:
                    record["skipped"].append(name)  # left to the toolchain's nearest rounding
                continue
            original = module.weight.detach().to(torch.float64)
            grid = grid_of(weight_range, module)
            groups = stat.hessian.shape[0]
            rows = original.reshape(groups, original.shape[0] // groups, -1)
            rounded, nearest = _gptq(rows.clone(), stat.hessian / stat.count, grid)
            rounded = rounded.reshape(original.shape)
            # The toolchain rounds again what we write: a channel whose grid it would not find is rounded to nearest.
            again = quantize_weight(rounded, *grid)
            step = 2 * original.abs().flatten(1).amax(1) / (grid[1] - grid[0])
            lost = (again - rounded).abs().flatten(1).amax(1) > 1e-6 * step  # float64: equal but for rounding noise
            if lost.any():
                rounded[lost] = quantize_weight(original[lost], *grid)
            record["nearest_channels"] += int(nearest.sum()) + int(lost.sum())
            if correct_mean:
                mean_patch = stat.patch_sum / stat.count  # [groups, inputs]
                delta = (rounded - original).reshape(rows.shape)
                shift = torch.einsum("gri,gi->gr", delta, mean_patch).reshape(-1)
                if module.bias is None:
                    module.bias = torch.nn.Parameter(torch.zeros(original.shape[0], dtype=module.weight.dtype))
                module.bias -= shift.to(module.bias.dtype)
            module.weight.copy_(rounded.to(module.weight.dtype))
            record["layers"] += 1
    return model, record


class _InputStats:
    """Sums over every input patch a layer saw: x x^T per group (float64) and x, and how many."""

    def __init__(self):
        self.hessian = None
        self.patch_sum = None
        self.count = 0
        self.unsupported = False

    def add(self, patches) -> None:  # [groups, n, inputs]
        import torch

        # One image's products in float32 (half the time of float64, a relative error near 1e-6 that the 1 %
        # damping dwarfs), summed over images in float64.
        patches = patches.to(torch.float32)
        hessian = torch.einsum("gni,gnj->gij", patches, patches).to(torch.float64)
        patch_sum = patches.sum(1).to(torch.float64)
        if self.hessian is None:
            self.hessian, self.patch_sum = hessian, patch_sum
        else:
            self.hessian += hessian
            self.patch_sum += patch_sum
        self.count += patches.shape[1]


def _gather(module, stat: _InputStats):
    def hook(_module, inputs, _output):
        for item in inputs[0].split(1):  # one image at a time: im2col of a depthwise layer is k*k times its input
            patches = _patches(module, item)
            if patches is None:
                stat.unsupported = True
                return
            stat.add(patches)

    return hook


def _patches(module, x):
    """The inputs each output of `module` is computed from, [groups, positions, inputs per group], or None when
    this module's padding is not one im2col can reproduce."""
    import torch
    import torch.nn.functional as F

    if isinstance(module, torch.nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    padding = module.padding
    if hasattr(module, "pad_input"):  # a convolution that pads in its own forward (efficientnet_lite.SameConv2d)
        x, padding = module.pad_input(x), 0
    elif isinstance(padding, str) or module.padding_mode != "zeros":
        return None
    columns = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)  # [1, C_in*k*k, L]
    groups = module.groups
    inputs = columns.shape[1] // groups
    return columns.reshape(groups, inputs, -1).transpose(1, 2)


def _gptq(weights, hessian, weight_range: tuple[int, int]):
    """GPTQ on `weights` [groups, rows, inputs] (float64) with `hessian` [groups, inputs, inputs]; each row keeps
    its scale from its largest weight, which stays as it is. Returns (rounded weights, rows left to nearest)."""
    import torch

    qmin, qmax = weight_range
    groups, rows, inputs = weights.shape
    original = weights.clone()
    nearest = quantize_weight(original.reshape(groups * rows, inputs), qmin, qmax).reshape(weights.shape)
    scale = torch.clamp(2 * original.abs().amax(2, keepdim=True) / (qmax - qmin), min=torch.finfo(torch.float32).eps)

    hessian = hessian.clone()
    diagonal = hessian.diagonal(dim1=1, dim2=2)
    dead = diagonal == 0  # inputs that were always zero: their weights never matter
    diagonal += DAMPING * diagonal.mean(1, keepdim=True) + dead.to(hessian.dtype)
    # Largest-diagonal inputs first (GPTQ's "act order"): the weights that matter most are rounded while
    # the most weights are left to absorb their error.
    order = torch.argsort(diagonal, dim=1, descending=True)
    weights = weights.gather(2, order[:, None, :].expand_as(weights))
    hessian = hessian.gather(1, order[:, :, None].expand_as(hessian)).gather(2, order[:, None, :].expand_as(hessian))
    factor, info = torch.linalg.cholesky_ex(hessian)
    failed = info != 0  # not positive definite even damped: those groups round to nearest
    factor[failed] = torch.eye(inputs, dtype=hessian.dtype)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)

    # Each row's largest weight sets its scale; it is never moved, so the toolchain finds the same scale.
    largest = weights.abs().argmax(2, keepdim=True)  # [groups, rows, 1]
    largest_value = weights.gather(2, largest)
    rounded = torch.zeros_like(weights)
    for column in range(inputs):
        value = weights[:, :, column]
        grid = torch.clamp(torch.round(value / scale[..., 0]), qmin, qmax) * scale[..., 0]
        rounded[:, :, column] = grid
        error = (value - grid) / upper[:, column, column][:, None]
        weights[:, :, column + 1 :] -= error[..., None] * upper[:, None, column, column + 1 :]
        pending = largest > column
        weights.scatter_(2, largest, torch.where(pending, largest_value, weights.gather(2, largest)))
    restored = torch.empty_like(rounded).scatter_(2, order[:, None, :].expand_as(rounded), rounded)
    restored[failed] = nearest[failed]
    return restored, failed[:, None].expand(groups, rows)
