"""What an int8 file computes, reproduced in torch: the runtimes' integer arithmetic over a converted PT2E graph.

Why: fake quantization, and convert_pt2e's graph run by torch, compute every int8 layer in
float and round the result once. The runtimes we ship to (XNNPACK, under ExecuTorch and under
LiteRT) accumulate integers and requantize with their own float32 or fixed-point multipliers,
so a few values in 10^5 round the other way; each is a whole step of a coarse tensor, and on
the reference Lite0 the flips they cascade into are most of what parts a QAT file from its
fake-quantize model. This interpreter runs a converted graph (`fold_quantize=False`) with the
runtimes' rules, so that what separates the file from torch can be measured layer by layer
and what is left over is the file's own doing; quantization/integer_forward.py runs the same
functions inside the QAT graph's forward pass. The rules:

- convolution and linear layer: the exact int32 accumulator, the bias rounded to int32 on the
  grid input scale x weight scale, requantized as XNNPACK does it:
  `round_half_even(float32(acc) * float32(float32(s_in * s_w) / s_out)) + zero point`,
  clamped to the fused activation's range;
- weights and bias rounded to integers as each converter rounds them (ExecuTorch in float32,
  times 1 / scale, as torch's quantize op; LiteRT in float64, divided by the scale: they part
  where a value falls on a half);
- add: XNNPACK's fixed-point add (multipliers of 20-odd bits for each input's scale over the
  output's, one rounding shift);
- an int8 tensor requantized to other parameters (PT2E gives a pad its own observer):
  ExecuTorch through float, as torch's quantize op; LiteRT with XNNPACK's convert op and its
  8-bit multiplier.

Integers are held less their zero point (the form the layers and the pads consume) in float32,
exactly. Anything else (the float tail: pooling, classifier) runs as torch runs it. Checked against the
files themselves: tests/test_qat.py (a small Lite-like net, 262,144 int8 outputs: all equal on
both targets) and benchmarks/integer_reference.py / qat.py on the reference Lite0 (QAT files
within 0.004 of a logit, most within 0.0005; the ExecuTorch bias rule was found on one that sat
0.033 away: a bias at exactly 21,120.5 steps in float32).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import numpy as np
import torch

_Q = torch.ops.quantized_decomposed
_CLAMPS = {torch.ops.aten.relu.default: (0.0, float("inf")), torch.ops.aten.relu6.default: (0.0, 6.0)}
REQUANTIZE = {"executorch": "float", "tflite": "xnnpack_convert"}  # how each target's runtime requantizes int8
# The precision each converter rounds weights and bias to integers in: ExecuTorch's is torch's quantize op (float32,
# weights times 1 / scale), LiteRT's is float64 (weights / scale). They part where a value falls on a half.
CONVERTER_PRECISION = {"executorch": torch.float32, "tflite": torch.float64}


def _along(values: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along `dim` of an `ndim`-dimensional tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return values.reshape(shape)


@dataclass(frozen=True)
class Quantized:
    """An int8 tensor: its integers less the zero point (held exactly in float32), its scale and zero point."""

    centred: torch.Tensor
    scale: float
    zero_point: int

    def value(self) -> torch.Tensor:
        return self.centred * self.scale  # float32 times a float32 scale: one rounding, as torch's dequantize


@dataclass(frozen=True)
class Accumulator:
    """A layer's int32 accumulator before requantization; `low`/`high` the fused activation's clamp (real units)."""

    acc: torch.Tensor
    step: torch.Tensor  # float32 input scale x weight scale, per output channel
    channel_dim: int
    low: float = -float("inf")
    high: float = float("inf")

    def per_channel(self, values: torch.Tensor) -> torch.Tensor:
        return _along(values, self.channel_dim, self.acc.dim())

    def value(self) -> torch.Tensor:
        return torch.clamp((self.acc * self.per_channel(self.step.double())).float(), self.low, self.high)


@dataclass(frozen=True)
class PendingAdd:
    """Two int8 tensors to be added; the sum is made once the output's parameters are known."""

    a: Quantized
    b: Quantized

    def value(self) -> torch.Tensor:
        return self.a.value() + self.b.value()


class IntegerReference(torch.fx.Interpreter):
    """Run a converted PT2E graph (fold_quantize=False) with the integer arithmetic of `target`'s runtime."""

    def __init__(self, graph_module, target: str):
        super().__init__(graph_module)
        self.requantize_mode = REQUANTIZE[target]
        self.precision = CONVERTER_PRECISION[target]

    def call_function(self, target, args, kwargs):
        handled = self._integer_op(target, args)
        if handled is not None:
            return handled
        args = tuple(_plain(arg) for arg in args)
        return super().call_function(target, args, kwargs)

    def call_module(self, target, args, kwargs):
        if target == "_guards_fn":  # torch.export's input-shape guard: nothing to compute
            return None
        return super().call_module(target, args, kwargs)

    def output(self, target, args, kwargs):
        result = args[0]
        return tuple(_plain(item) for item in result) if isinstance(result, (tuple, list)) else _plain(result)

    def _integer_op(self, target, args):
        """The integer form of one node, or None where torch's float form is the runtime's too."""
        if target == _Q.quantize_per_tensor.default:
            x, scale, zero_point, low, high = args[:5]
            if isinstance(x, Accumulator):
                return requantize_accumulator(x, scale, zero_point, low, high)
            if isinstance(x, PendingAdd):
                return xnnpack_add(x, scale, zero_point, low, high)
            if isinstance(x, Quantized) and self.requantize_mode == "xnnpack_convert":
                return xnnpack_convert(x, scale, zero_point, low, high)
            quantized = super().call_function(target, (_plain(x), *args[1:]), {})
            return Quantized(quantized.float() - zero_point, scale, zero_point)
        if target == _Q.dequantize_per_tensor.default and isinstance(args[0], Quantized):
            return args[0]
        if target == _Q.quantize_per_channel.default:
            return integer_weights(*args[:6], self.precision)
        if target == _Q.dequantize_per_channel.default:
            return Weights(*args[:4])
        if target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default) and integer_layer(args):
            return accumulate(target, args, self.precision)
        if isinstance(args[0], Accumulator) and activation_range(target, args) is not None:
            return clamped(args[0], *activation_range(target, args))
        if target == torch.ops.aten.pad.default and isinstance(args[0], Quantized) and not args[2:]:
            x = args[0]  # zero padding is the zero point
            return replace(x, centred=torch.nn.functional.pad(x.centred, args[1]))
        if target == torch.ops.aten.add.Tensor and all(isinstance(arg, Quantized) for arg in args[:2]):
            return PendingAdd(args[0], args[1])
        return None


@dataclass(frozen=True)
class Weights:
    """Per-channel int8 weights; `value` the dequantized ones, for a layer that stays float."""

    q: torch.Tensor  # integer weights (float64), from quantize_per_channel
    scale: torch.Tensor
    zero_point: torch.Tensor
    axis: int

    def value(self) -> torch.Tensor:
        centred = self.q - _along(self.zero_point, self.axis, self.q.dim())
        return (centred * _along(self.scale, self.axis, self.q.dim())).float()

    def symmetric_per_output_channel(self) -> bool:
        """What XNNPACK's int8 layers take (qc8w); anything else is left to torch's float form here."""
        return self.axis == 0 and not bool(self.zero_point.any())


def integer_weights(weights, scale, zero_point, axis: int, low: int, high: int, precision: torch.dtype) -> torch.Tensor:
    """Per-channel integer weights (in float64) as the converter of `precision` rounds them (CONVERTER_PRECISION)."""
    if precision == torch.float32:  # torch's quantize op itself: it multiplies by 1 / scale
        return _Q.quantize_per_channel.default(weights, scale, zero_point, axis, low, high, torch.int8).double()
    q = torch.round(weights.double() / _along(scale.double(), axis, weights.dim()))
    return torch.clamp(q + _along(zero_point, axis, weights.dim()), low, high)


def run(graph_module, arrays: np.ndarray, target: str, batch: int = 16) -> np.ndarray:
    """Logits of `graph_module` (converted, fold_quantize=False) for NCHW float `arrays`, as `target`'s runtime computes."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch):
            result = IntegerReference(graph_module, target).run(torch.from_numpy(arrays[start : start + batch]))
            outputs.append((result[0] if isinstance(result, tuple) else result).numpy())
    return np.concatenate(outputs)


def _plain(value):
    """The real-valued tensor behind an integer form (what torch's float graph would hold there)."""
    return value.value() if isinstance(value, (Quantized, Accumulator, PendingAdd, Weights)) else value


def integer_layer(args) -> bool:
    has_bias = len(args) < 3 or args[2] is None or isinstance(args[2], torch.Tensor)
    weights = args[1]
    integer_weights = isinstance(weights, Weights) and weights.symmetric_per_output_channel()
    return isinstance(args[0], Quantized) and integer_weights and has_bias


def accumulate(target, args, precision: torch.dtype) -> Accumulator:
    x, weights = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    step = (torch.tensor(x.scale, dtype=torch.float32) * weights.scale.float()).float()
    if bias is None:
        bias_int32 = None
    elif precision == torch.float32:  # torch's quantize op, as for the weights: times 1 / scale, in float32
        bias_int32 = torch.round(bias.float() * (1.0 / step)).double()
    else:
        bias_int32 = torch.round(bias.double() / (torch.tensor(x.scale, dtype=torch.float64) * weights.scale.double()))
    if target == torch.ops.aten.linear.default:
        return Accumulator(_integer_sum(torch.nn.functional.linear, x, weights.q, bias_int32), step, -1)
    # stride, padding, dilation and groups as the graph has them
    return Accumulator(_integer_sum(torch.nn.functional.conv2d, x, weights.q, bias_int32, *args[3:]), step, 1)


def _integer_sum(layer, x: Quantized, weights: torch.Tensor, bias: torch.Tensor | None, *layer_args) -> torch.Tensor:
    """`layer` over integer inputs and weights plus the integer bias, exactly: in float32 or float64.

    Float32 on the CPU where no partial sum can pass 2**24: every product and sum is then an
    integer float32 holds, in whatever order the kernel adds them, and it runs twice as fast
    (the QAT forward pass does this per layer, integer_forward.py). Elsewhere float64, which
    holds every int32 sum (and a GPU's float32 may be TF32).
    """
    largest_input = max(127 - x.zero_point, x.zero_point + 128)  # int8 less its zero point, whatever the data
    bound = largest_input * float(weights.abs().flatten(1).sum(1).max())
    bound += float(bias.abs().max()) if bias is not None and bias.numel() else 0.0
    dtype = torch.float32 if x.centred.device.type == "cpu" and bound < 2**24 else torch.float64
    bias = None if bias is None else bias.to(dtype)
    return layer(x.centred.to(dtype), weights.to(dtype), bias, *layer_args)


def activation_range(target, args) -> tuple[float, float] | None:
    """The range a fused activation clamps to (ReLU, ReLU6, hardtanh with its defaults); None for any other op."""
    if target == torch.ops.aten.hardtanh.default:
        return (args[1] if len(args) > 1 else -1.0, args[2] if len(args) > 2 else 1.0)
    return _CLAMPS.get(target)


def clamped(accumulator: Accumulator, low: float, high: float) -> Accumulator:
    return replace(accumulator, low=max(accumulator.low, low), high=min(accumulator.high, high))


def requantize_accumulator(accumulator: Accumulator, scale, zero_point, low, high) -> Quantized:
    """XNNPACK's float32 requantization (conv, depthwise conv, fully connected), the activation clamp folded in."""
    low, high = low - zero_point, high - zero_point  # in the integers less the zero point, as Quantized holds them
    if accumulator.low > -float("inf"):
        low = max(low, round(accumulator.low / scale))
    if accumulator.high < float("inf"):
        high = min(high, round(accumulator.high / scale))
    multiplier = accumulator.per_channel((accumulator.step / torch.tensor(scale, dtype=torch.float32)).float())
    centred = (accumulator.acc.float() * multiplier).round_().clamp_(low, high)  # round half to even, as lrintf
    return Quantized(centred, scale, zero_point)


def xnnpack_add(pending: PendingAdd, scale, zero_point, low, high) -> Quantized:
    """XNNPACK's qs8 add: a * a_multiplier + b * b_multiplier + bias, shifted right with rounding."""
    a_ratio, b_ratio = _f32(_f32(pending.a.scale) / _f32(scale)), _f32(_f32(pending.b.scale) / _f32(scale))
    exponent = (struct.unpack("<I", struct.pack("<f", max(a_ratio, b_ratio)))[0] >> 23) - 127
    shift = 20 - exponent  # the larger multiplier gets 21-22 bits
    a_multiplier, b_multiplier = round(a_ratio * 2.0**shift), round(b_ratio * 2.0**shift)
    # its bias, rounding less each input's zero point times its multiplier, cancels the zero points Quantized leaves out
    acc = pending.a.centred.long().mul_(a_multiplier).add_(pending.b.centred.long().mul_(b_multiplier))
    centred = acc.add_(1 << (shift - 1)).bitwise_right_shift_(shift).float()
    return Quantized(centred.clamp_(low - zero_point, high - zero_point), scale, zero_point)


def xnnpack_convert(x: Quantized, scale, zero_point, low, high) -> Quantized:
    """XNNPACK's qs8 -> qs8 convert (LiteRT's requantize): an 8-bit fixed-point multiplier, round half up."""
    if x.scale == scale and x.zero_point == zero_point:
        return x
    multiplier = round(-256.0 * _f32(_f32(x.scale) / _f32(scale)))
    # acc = (zero_point << 8) + 0x80 + (x.zero_point - q) * multiplier, shifted right by 8; the output zero point
    # (a whole multiple of 256 there) passes the shift unchanged, so the centred result leaves it out
    if 255 * abs(multiplier) + 0x80 < 2**24:  # float32 holds every value exactly, and / 256 then floor is the shift
        centred = (x.centred * -multiplier).add_(0x80).div_(256).floor_()
    else:
        centred = ((0x80 - x.centred.long() * multiplier) >> 8).float()
    return Quantized(centred.clamp_(low - zero_point, high - zero_point), scale, zero_point)


def _f32(value: float) -> float:
    """`value` rounded to float32, as the runtime's C code holds it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]
