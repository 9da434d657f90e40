"""The runtimes' integer arithmetic in the QAT fake-quantize graph, so that it computes what the int8 file computes.

Why: a fake-quantize graph computes each int8 layer in float and rounds once. The runtimes we
ship to (XNNPACK, under ExecuTorch and LiteRT) accumulate integers, store the folded bias as
int32 and requantize with their own float32 or fixed-point multipliers, so a few values in
10^5 round the other way, and the flips they cascade into were what parted the reference
Lite0's QAT files from their fake-quantize models (0.029-0.034 mean |logit difference|, up to
3 flips in 143 held-out photos), while every file sat within 0.004 of the same graph run with
the runtimes' rules (quantization/integer_reference.py).

How: after each activation fake quantizer whose value the runtime computes in integers,
`emulate` adds a node that computes that value from its inputs' integers, with
integer_reference's rules for the target:
- a convolution or linear layer whose input and weights (symmetric, per output channel) are
  fake-quantized, its batch norm folded as convert_pt2e folds it (running statistics), its
  ReLU / ReLU6 / hardtanh folded into the clamp: the exact accumulator, the int32 bias, XNNPACK's
  requantization;
- an add of two fake-quantized tensors: XNNPACK's fixed-point add;
- on LiteRT, a pad with a fake quantizer of its own: XNNPACK's convert (ExecuTorch requantizes
  through float, as the fake quantizer does).

The node's value is the runtime's and its gradient the fake quantizer's: straight-through,
like fake quantization itself. A layer is left alone while
fake quantization is off or while its batch norm normalises with batch statistics (the runtime
folds running ones; qat.set_mode flips that flag). The integer pass costs one more forward pass
of each int8 layer without gradient (float32 where that is exact). `strip` takes the nodes out
before convert_pt2e: the converted graph must not carry them into the artifact.
"""

from __future__ import annotations

from functools import partial
from operator import is_not

import torch

from dermmobile.quantization.integer_reference import (
    CONVERTER_PRECISION,
    REQUANTIZE,
    PendingAdd,
    Quantized,
    Weights,
    accumulate,
    activation_range,
    clamped,
    integer_weights,
    requantize_accumulator,
    xnnpack_add,
    xnnpack_convert,
)
from dermmobile.targets.pt2e import BN_EPS, BN_TRAINING, is_layer

_BATCH_NORM = torch.ops.aten.batch_norm.default
BATCH_STATISTICS = 2  # layer_as_runtime's argument that says its batch norm normalises with batch statistics


def layer_as_runtime(fake, fake_quant_on, batch_statistics, x, weight, bias, norm, quantizers, constants):
    """The int8 output of one layer as the runtime computes it (see the module docstring); `fake` outside QAT's int8."""
    if not bool(fake_quant_on) or (batch_statistics and norm is not None):
        return fake
    in_scale, in_zero, weight_scale, weight_zero, out_scale, out_zero = quantizers
    with torch.no_grad():
        precision = CONVERTER_PRECISION[constants["target"]]
        if norm is not None:  # what convert_pt2e folds: the same function on the same tensors
            from torch.nn.utils.fusion import fuse_conv_bn_weights

            norm_weight, norm_bias, mean, var, eps = norm
            bias = None if bias is None else bias.reshape(-1)  # the pattern adds it shaped to the output
            weight, bias = fuse_conv_bn_weights(weight, bias, mean, var, eps, norm_weight, norm_bias)
        weights = Weights(integer_weights(weight, weight_scale, weight_zero, 0, *constants["weight_range"], precision),
                          weight_scale, weight_zero, 0)  # fmt: skip
        op = torch.ops.aten.linear.default if constants["op"] == "linear" else torch.ops.aten.conv2d.default
        summed = accumulate(op, (_quantized(x, in_scale, in_zero), weights, bias, *constants["layer_args"]), precision)
        out = requantize_accumulator(clamped(summed, *constants["clamp"]), float(out_scale), int(out_zero),
                                     *constants["out_range"])  # fmt: skip
    return _StraightThrough.apply(fake, out.value())


def add_as_runtime(fake, fake_quant_on, a, b, quantizers, out_range):
    """The int8 sum of two int8 tensors as XNNPACK's add computes it; `fake` while fake quantization is off."""
    if not bool(fake_quant_on):
        return fake
    a_scale, a_zero, b_scale, b_zero, out_scale, out_zero = quantizers
    with torch.no_grad():
        pending = PendingAdd(_quantized(a, a_scale, a_zero), _quantized(b, b_scale, b_zero))
        out = xnnpack_add(pending, float(out_scale), int(out_zero), *out_range)
    return _StraightThrough.apply(fake, out.value())


def requantize_as_runtime(fake, fake_quant_on, x, quantizers, out_range):
    """An int8 tensor requantized to its fake quantizer's parameters as XNNPACK's convert does (LiteRT)."""
    if not bool(fake_quant_on):
        return fake
    in_scale, in_zero, out_scale, out_zero = quantizers
    with torch.no_grad():
        out = xnnpack_convert(_quantized(x, in_scale, in_zero), float(out_scale), int(out_zero), *out_range)
    return _StraightThrough.apply(fake, out.value())


RULES = (layer_as_runtime, add_as_runtime, requantize_as_runtime)


class _StraightThrough(torch.autograd.Function):
    """The runtime's value forward, the fake quantizer's gradient backward (no elementwise pass for either)."""

    @staticmethod
    def forward(ctx, fake, value):
        return value

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def emulate(prepared, target: str) -> dict[str, int]:
    """Give every activation fake quantizer of a prepared QAT graph the runtime's value where the runtime computes it in
    integers; return how many of each kind ({"layer": n, "add": n, "requantize": n})."""
    graph = prepared.graph
    ends = {}  # the node a layer's folded output ends at -> (layer, its bias node, its batch norm node)
    for layer in graph.nodes:
        if is_layer(layer):
            end, bias, norm = _layer_output(layer)
            if end is not None:
                ends[end] = (layer, bias, norm)
    planned = []
    for node in graph.nodes:
        if _fake_quantizer(prepared, node) is None or not _per_tensor(prepared, node):
            continue
        plan = _layer_plan(prepared, node, ends, target) or _add_plan(prepared, node)
        if plan is None and REQUANTIZE[target] == "xnnpack_convert":
            plan = _requantize_plan(prepared, node)
        if plan is not None:
            planned.append((node, *plan))
    counts = {"layer": 0, "add": 0, "requantize": 0}
    made = {}
    for quantizer, kind, rule, args in planned:
        with graph.inserting_before(quantizer):
            args = _attributes(graph, args)
            fake_quant_on = graph.get_attr(f"{quantizer.target}.fake_quant_enabled")
        with graph.inserting_after(quantizer):
            made[quantizer] = graph.call_function(rule, (quantizer, fake_quant_on, *args))
        counts[kind] += 1
    for quantizer, runtime in made.items():  # every user, other rules' inputs included, now reads the runtime's value
        quantizer.replace_all_uses_with(runtime, delete_user_cb=partial(is_not, runtime))
    prepared.recompile()
    return counts


def strip(graph_module) -> int:
    """Take the emulation out of a graph (before convert_pt2e); return how many nodes went."""
    graph = graph_module.graph
    stripped = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in RULES:
            added = [arg for arg in node.all_input_nodes if arg.op == "get_attr"]
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            for attribute in added:  # the quantizers' attributes emulate read; the model's own tensors have users
                if not attribute.users:
                    graph.erase_node(attribute)
            stripped += 1
    graph_module.recompile()
    return stripped


def _layer_plan(prepared, quantizer, ends, target: str):
    """("layer", layer_as_runtime, its arguments) where `quantizer` takes a fake-quantized layer's output, else None."""
    source, clamp = quantizer.args[0], (-float("inf"), float("inf"))
    if activation_range(source.target, source.args) is not None:
        if len(source.users) != 1:
            return None
        clamp, source = activation_range(source.target, source.args), source.args[0]
    if source not in ends or len(source.users) != 1:
        return None
    layer, bias, norm = ends[source]
    x, weight_quantizer = layer.args[0], layer.args[1]
    if _fake_quantizer(prepared, x) is None or not _per_tensor(prepared, x):
        return None
    weight_module = _fake_quantizer(prepared, weight_quantizer)
    if weight_module is None or weight_module.qscheme != torch.per_channel_symmetric or weight_module.ch_axis != 0:
        return None  # XNNPACK computes in integers only with symmetric per-output-channel weights
    weight = weight_quantizer.args[0]
    linear = layer.target == torch.ops.aten.linear.default
    if norm is not None:
        if linear or weight.target != torch.ops.aten.mul.Tensor or weight.args[0].op != "get_attr":
            return None  # torchao's conv + batch-norm pattern scales the weight itself: w x (gamma / std)
        weight = weight.args[0]
    stats = (*norm.args[1:5], norm.args[BN_EPS]) if norm is not None else None
    out_module = _fake_quantizer(prepared, quantizer)
    constants = {
        "target": target,
        "op": "linear" if linear else "conv2d",
        "layer_args": list(layer.args[3:]),
        "clamp": [float(value) for value in clamp],
        "weight_range": [weight_module.quant_min, weight_module.quant_max],
        "out_range": [out_module.quant_min, out_module.quant_max],
    }
    batch_statistics = bool(norm.args[BN_TRAINING]) if norm is not None else False
    names = (x.target, weight_quantizer.target, quantizer.target)
    args = (batch_statistics, x, weight, bias, stats, _scales(*names), constants)
    return "layer", layer_as_runtime, args


def _add_plan(prepared, quantizer):
    source = quantizer.args[0]
    if source.target != torch.ops.aten.add.Tensor or len(source.users) != 1:
        return None
    inputs = source.args[:2]
    if not all(_fake_quantizer(prepared, node) is not None and _per_tensor(prepared, node) for node in inputs):
        return None
    out_module = _fake_quantizer(prepared, quantizer)
    names = (inputs[0].target, inputs[1].target, quantizer.target)
    return "add", add_as_runtime, (*inputs, _scales(*names), [out_module.quant_min, out_module.quant_max])


def _requantize_plan(prepared, quantizer):
    source = quantizer.args[0]
    zero_padding = source.target == torch.ops.aten.pad.default and len(source.args) == 2
    if not zero_padding or _fake_quantizer(prepared, source.args[0]) is None or not _per_tensor(prepared, source.args[0]):
        return None
    out_module = _fake_quantizer(prepared, quantizer)
    names = (source.args[0].target, quantizer.target)
    return "requantize", requantize_as_runtime, (source, _scales(*names), [out_module.quant_min, out_module.quant_max])


def _scales(*quantizers: str) -> tuple[str, ...]:
    """Attribute names of each quantizer's scale and zero point (made get_attr nodes by _attributes)."""
    return tuple(f"{name}.{attribute}" for name in quantizers for attribute in ("scale", "zero_point"))


def _attributes(graph, args):
    """`args` with each tuple of attribute names (from _scales) made a tuple of get_attr nodes."""
    return tuple(tuple(graph.get_attr(name) for name in arg) if _is_names(arg) else arg for arg in args)


def _is_names(arg) -> bool:
    return isinstance(arg, tuple) and bool(arg) and all(isinstance(item, str) for item in arg)


def _quantized(x, scale, zero_point) -> Quantized:
    """The integers behind a fake-quantized tensor (its values are exact multiples of the scale)."""
    scale = float(scale)
    return Quantized((x / scale).round_(), scale, int(zero_point))  # x / scale is within an ulp of an integer


def _fake_quantizer(prepared, node):
    """The fake quantizer module that produces `node`, if one does."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    if not (isinstance(node, torch.fx.Node) and node.op == "call_module"):
        return None
    module = prepared.get_submodule(node.target)
    return module if isinstance(module, FakeQuantizeBase) else None


def _per_tensor(prepared, node) -> bool:
    return _fake_quantizer(prepared, node).qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric)


def _layer_output(layer):
    """(the node whose value the runtime's folded layer outputs, the layer's bias node, its batch norm node).

    torchao's QAT conv + batch-norm pattern is conv(x, w x scale) -> / scale -> [+ conv bias] -> batch_norm;
    a layer without batch norm ends at itself. (None, None, None) for anything else.
    """
    bias = layer.args[2] if len(layer.args) > 2 else None
    users = list(layer.users)
    if len(users) != 1 or users[0].target != torch.ops.aten.div.Tensor:
        return layer, bias, None
    node = users[0]
    after = list(node.users)
    if len(after) == 1 and after[0].target == torch.ops.aten.add.Tensor and after[0].args[0] is node:
        node, bias = after[0], after[0].args[1]
        after = list(node.users)
    if len(after) == 1 and after[0].target == _BATCH_NORM:
        return after[0], bias, after[0]
    return None, None, None
