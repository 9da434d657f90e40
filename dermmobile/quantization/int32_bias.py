"""The runtimes' int32 bias, emulated in the QAT fake-quantize graph so that it computes what the int8 file computes.

Why: every int8 runtime we ship to (XNNPACK under ExecuTorch and LiteRT; the TFLite int8
spec) stores a quantized convolution's or linear layer's bias as int32 on the grid
`input scale x weight scale` of each output channel, so it can be added to the integer
accumulator. The fake-quantize graph adds the float bias (after batch norm: the folded
one). The difference is at most half a grid step per channel, far below an activation
step, but it is the same in every position and every image, so it moves activations across
rounding boundaries in every layer. On the reference Lite0 (143 held-out sd198-27 photos)
the QAT model sat 0.040-0.041 (mean |logit difference|) from its int8 files; with the bias
rounded here 0.030-0.031. What is left is the runtimes' integer requantization, which the
fake-quantize graph still does in float (quantization/integer_reference.py reproduces it).

How: after each fake-quantized convolution or linear layer (its input and weight both pass a
fake quantizer) of a prepared QAT graph, `emulate` adds a node that adds
`int32_bias_error(folded bias, input scale, weight scale)`, computed from the live scales and
batch norm statistics (running ones: what convert folds) and held constant for gradients.
It adds nothing while fake quantization is off. `strip` takes the nodes out again before
convert_pt2e: the converted graph must not carry them into the artifact.
"""

from __future__ import annotations

from functools import partial
from operator import is_not

import torch

from dermmobile.targets.pt2e import BN_EPS, is_layer

_BATCH_NORM = torch.ops.aten.batch_norm.default


def int32_bias_error(bias, input_scale, weight_scale):
    """What storing `bias` as int32 on the grid input_scale x weight_scale (per output channel) adds to it."""
    step = input_scale * weight_scale
    return torch.round(bias / step) * step - bias


def with_int32_bias(out, channel_dim, fake_quant_on, input_scale, weight_scale, bias, bn_weight, bn_bias, mean, var, eps):
    """`out` (a layer's output, after its batch norm if any) plus the int32 rounding of the bias the runtime folds.

    The folded bias is the runtime's: batch norm with running statistics folded into the layer's own bias.
    `channel_dim`: where `out` keeps its output channels (1 for a convolution, -1 for a linear layer).
    """
    if not bool(fake_quant_on):
        return out
    with torch.no_grad():
        folded = torch.zeros_like(weight_scale) if bias is None else bias.reshape(-1)
        if bn_weight is not None:
            folded = bn_bias + (folded - mean) * (bn_weight / torch.sqrt(var + eps))
        error = int32_bias_error(folded, input_scale, weight_scale)
    shape = [1] * out.dim()
    shape[channel_dim] = -1
    return out + error.reshape(shape)


def emulate(prepared) -> int:
    """Add the int32 bias rounding after every fake-quantized layer of a prepared QAT graph; return how many layers."""
    graph = prepared.graph
    emulated = 0
    for layer in list(graph.nodes):
        if not is_layer(layer):
            continue
        found = _fake_quantizer(prepared, layer.args[0]), _fake_quantizer(prepared, layer.args[1])
        if None in found:
            continue  # a float layer: the runtime keeps its bias float too
        end, bias, norm = _layer_output(layer)
        if end is None:
            continue
        with graph.inserting_before(layer):
            scales = [graph.get_attr(f"{quantizer}.scale") for quantizer in found]
            fake_quant_on = graph.get_attr(f"{found[1]}.fake_quant_enabled")
        stats = (*norm.args[1:5], norm.args[BN_EPS]) if norm is not None else (None, None, None, None, 0.0)
        with graph.inserting_after(end):
            channel_dim = -1 if layer.target == torch.ops.aten.linear.default else 1
            rounded = graph.call_function(with_int32_bias, (end, channel_dim, fake_quant_on, *scales, bias, *stats))
        end.replace_all_uses_with(rounded, delete_user_cb=partial(is_not, rounded))  # not in the new node itself
        emulated += 1
    prepared.recompile()
    return emulated


def strip(graph_module) -> int:
    """Take the emulation out of a graph (before convert_pt2e); return how many nodes went."""
    graph = graph_module.graph
    stripped = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is with_int32_bias:
            attributes = node.args[2:5]  # the get_attr nodes emulate added: fake_quant_on and the two scales
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            for attribute in attributes:
                if not attribute.users:
                    graph.erase_node(attribute)
            stripped += 1
    graph_module.recompile()
    return stripped


def _fake_quantizer(prepared, node) -> str | None:
    """The module name of the fake quantizer that produces `node`, if one does."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    quantizes = isinstance(node, torch.fx.Node) and node.op == "call_module"
    return node.target if quantizes and isinstance(prepared.get_submodule(node.target), FakeQuantizeBase) else None


def _layer_output(layer):
    """(the node whose value the runtime's folded layer outputs, the layer's bias node, its batch norm node).

    torchao's QAT conv + batch-norm pattern is conv(x, w x scale) -> / scale -> [+ conv bias] -> batch_norm;
    a layer without batch norm carries its bias as its third argument. (None, ...) for anything else.
    """
    bias = layer.args[2] if len(layer.args) > 2 else None
    users = list(layer.users)
    if len(users) != 1 or users[0].target != torch.ops.aten.div.Tensor:
        return (layer, bias, None) if bias is not None else (None, None, None)
    node = users[0]
    after = list(node.users)
    if len(after) == 1 and after[0].target == torch.ops.aten.add.Tensor and after[0].args[0] is node:
        node, bias = after[0], after[0].args[1]
        after = list(node.users)
    if len(after) == 1 and after[0].target == _BATCH_NORM:
        return after[0], bias, after[0]
    return None, None, None
