"""PT2E static int8 pieces shared by the TFLite and ExecuTorch targets.

Why a clamp-aware quantizer: the XNNPACK and litert quantizers do not fuse a ReLU6 with
the convolution before it. `F.relu6` exports as `aten.relu6`, which they leave alone;
`nn.ReLU6` exports as `aten.hardtanh`, which they give the convolution's own observer.
Either way the int8 scale comes from the convolution's raw output: in EfficientNet-Lite0's
stem that reaches 94, its first depthwise block 129, so the 0..6 that ReLU6 keeps gets 14
to 23 of the 256 levels. Moving the output observer from the convolution to the clamp
gives those values the whole range, and XNNPACK then fuses the clamp into the int8
convolution.

Measured on Lite0 fine-tuned on sd198-27, 649 photos not used for calibration, old and
new artifacts timed in alternating rounds at 2 threads:
- ExecuTorch: agreement with fp32 85.1 % -> 95.4 %, median 8.7 -> 8.5 ms. Used.
- TFLite: 95.8 % -> 96.1 %, but 6.3 -> 8.3 ms: litert-torch's converter already folds
  ReLU6 into its int8 convolutions, and with the observer moved it kept 33 layout
  transposes. Not used there, except for QAT (see build_quantizer: the fake-quantize model
  must compute what the file will).

`build_quantizer` is the one place that makes the PT2E quantizer of a toolchain: its
activation observer, and the layers (module names) left in float by the accuracy-aware
fallback. The TFLite and ExecuTorch targets, the sensitivity simulation and QAT all use it.
"""

from __future__ import annotations

import numpy as np

from dermmobile.targets.base import FULL_WEIGHT_RANGE

# Convolution and linear outputs followed only by a clamp get observed after the clamp. QAT
# graphs keep batch norm until convert folds it: there the clamp follows the batch norm.
_PRODUCERS = ("conv2d", "linear", "batch_norm")
_CLAMPS = ("relu6", "hardtanh")
# Activations that belong to the layer before them: a layer left in float keeps its own in float too.
_ACTIVATIONS = ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "clamp")

# XNNPACK's smallest int8 scale: both toolchains' quantizers give their observers this eps.
SCALE_FLOOR = 2**-12
# Argument positions in aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, ...)
# and aten.dropout(input, p, train), as the QAT graph passes (qat.py, quantization/integer_forward.py) edit or read them.
BN_RUNNING_VAR, BN_TRAINING, BN_EPS, DROPOUT_TRAIN = 4, 5, 7, 2
# PT2E activation observers by the name users pick (`--observer`); weights are always per-channel min/max.
OBSERVERS = ("histogram", "minmax", "moving-average")
# The toolchains' own quantizers: (module, class, clamp-aware). See the module docstring for the clamp.
TOOLCHAINS = {
    "xnnpack": ("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "XNNPACKQuantizer", True),
    "litert": ("litert_torch.quantize.pt2e_quantizer", "PT2EQuantizer", False),
}


def observe_after_clamps(graph_module) -> int:
    """Move each conv/linear (QAT: batch norm) output annotation onto the clamp that is its only user; return how many moved."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    producers = {getattr(torch.ops.aten, name).default for name in _PRODUCERS}
    clamps = {getattr(torch.ops.aten, name).default for name in _CLAMPS}
    moved = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in clamps:
            continue
        producer = node.args[0]
        if not isinstance(producer, torch.fx.Node) or producer.target not in producers or len(producer.users) != 1:
            continue
        annotation = producer.meta.get(Q_ANNOTATION_KEY)
        if annotation is None or annotation.output_qspec is None:
            continue
        # Replaces the quantizer's own hardtanh annotation too: it shares the conv's observer, raw range included.
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=annotation.output_qspec, _annotated=True)
        annotation.output_qspec = None
        moved += 1
    return moved


def layer_name(node) -> str | None:
    """The module path of a conv/linear node (\"_blocks.3._depthwise_conv\"), from torch.export's module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def is_layer(node) -> bool:
    import torch

    return node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def set_weight_grids(graph_module, layer_ranges: dict[str, tuple[int, int]]) -> int:
    """Give the weights of the layers named in `layer_ranges` their own (qmin, qmax) grid; return how many changed."""
    import dataclasses

    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    changed = 0
    for node in graph_module.graph.nodes:
        if not is_layer(node) or layer_name(node) not in layer_ranges or Q_ANNOTATION_KEY not in node.meta:
            continue
        specs, weight = node.meta[Q_ANNOTATION_KEY].input_qspec_map, node.args[1]
        if specs.get(weight) is not None:
            qmin, qmax = layer_ranges[layer_name(node)]
            specs[weight] = dataclasses.replace(specs[weight], quant_min=qmin, quant_max=qmax)
            changed += 1
    return changed


def leave_float(graph_module, float_layers: frozenset[str]) -> int:
    """Drop the annotations of the layers named in `float_layers` and of their activations; return how many layers.

    What stays float is the layer's weights and its computation. A tensor between a float
    layer and a quantized one is still quantized by the quantized side (the toolchains put a
    quantize/dequantize there); between two float layers it stays float. Two neighbours go
    float with the layer, or the file cannot be built:
    - a pass-through op feeding only this layer (the "SAME" pad before each depthwise
      convolution of EfficientNet-Lite): quantized, it hands the float layer an int8 input,
      which XNNPACK refuses ("Weight and Input should both be quantized");
    - an op whose quantization is shared with the float layer's output (the average pool
      after the last convolution): its shared spec would point at nothing, and prepare_pt2e
      fails with a KeyError.

    A name that matches no layer is an error (ExportFailedError), as in the ONNX target: a typo must not
    produce an "int8 with X in float" file that has nothing in float.
    """
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    if not float_layers:
        return 0
    dropped, found = 0, set()
    for node in graph_module.graph.nodes:
        if not is_layer(node) or layer_name(node) not in float_layers:
            continue
        node.meta.pop(Q_ANNOTATION_KEY, None)
        dropped += 1
        found.add(layer_name(node))
        tail = node
        while len(tail.users) == 1:
            (tail,) = tail.users
            if tail.op != "call_function" or getattr(tail.target, "__name__", "").split(".")[0] not in _ACTIVATIONS:
                break
            tail.meta.pop(Q_ANNOTATION_KEY, None)
        head = node.args[0]
        while _passes_through(head) and len(head.users) == 1:
            head.meta.pop(Q_ANNOTATION_KEY, None)
            head = head.args[0]
    missing = sorted(set(float_layers) - found)
    if missing:
        from dermmobile.errors import ExportFailedError

        raise ExportFailedError(f"no convolution or linear layer of the model is named {', '.join(missing[:5])}: "
                                "cannot leave it in float (names are module paths, e.g. _blocks.3._depthwise_conv)")  # fmt: skip
    if dropped:
        _drop_dangling_shares(graph_module)
    return dropped


def _passes_through(node) -> bool:
    """Is `node` an op whose int8 output only repeats its input's quantization (pad, reshape, pooling)?"""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    annotation = getattr(node, "meta", {}).get(Q_ANNOTATION_KEY)
    return annotation is not None and isinstance(annotation.output_qspec, SharedQuantizationSpec)


def _drop_dangling_shares(graph_module) -> None:
    """Drop each annotation that shares its quantization with a tensor no longer quantized (until none is left)."""
    import torch
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    def quantized(edge_or_node) -> bool:
        if isinstance(edge_or_node, torch.fx.Node):
            annotation = edge_or_node.meta.get(Q_ANNOTATION_KEY)
            return annotation is not None and annotation.output_qspec is not None
        producer, consumer = edge_or_node
        annotation = consumer.meta.get(Q_ANNOTATION_KEY)
        return annotation is not None and annotation.input_qspec_map.get(producer) is not None

    changed = True
    while changed:
        changed = False
        for node in graph_module.graph.nodes:
            annotation = node.meta.get(Q_ANNOTATION_KEY)
            if annotation is None:
                continue
            specs = [annotation.output_qspec, *annotation.input_qspec_map.values()]
            if any(isinstance(spec, SharedQuantizationSpec) and not quantized(spec.edge_or_node) for spec in specs):
                node.meta.pop(Q_ANNOTATION_KEY)
                changed = True


def build_quantizer(
    toolchain: str, float_layers=frozenset(), observer: str = "histogram", qat: bool = False, clamp: bool | None = None,
    weight_range: tuple[int, int] = FULL_WEIGHT_RANGE, layer_ranges: dict[str, tuple[int, int]] | None = None,
):  # fmt: skip
    """The PT2E quantizer of `toolchain` ("xnnpack": ExecuTorch, "litert": TFLite): symmetric per-channel
    int8 weights, per-tensor int8 activations observed by `observer`, `float_layers` left unannotated.
    Weights use the grid `weight_range`, but the layers (module names) in `layer_ranges` use their own.

    clamp: observe ReLU6 outputs after the clamp (None: the toolchain's choice, see the module docstring).
    qat: the same annotation with fake-quantize observers for `dermmobile qat` (histogram ranges
    learned in training: `observer` does not apply), see `unfused` and `histogram_activations`.
    """
    import importlib

    from torchao.quantization.pt2e import observer as observers

    if toolchain not in TOOLCHAINS:
        raise ValueError(f"unknown PT2E toolchain {toolchain!r}; valid: {', '.join(TOOLCHAINS)}")
    if observer not in OBSERVERS:
        from dermmobile.errors import BadInputError

        raise BadInputError(f"unknown observer {observer!r}; valid: {', '.join(OBSERVERS)}")
    module_name, class_name, default_clamp = TOOLCHAINS[toolchain]
    # QAT observes after the clamp on every toolchain: its fake-quantize model must compute what the
    # file will, and litert-torch's converter fuses each ReLU6 and keeps the clamp's range (as the
    # simulation found). Observed before the clamp, a QAT Lite0's TFLite file agreed with its own
    # fake-quantize model on 74.1 % of the 143 held-out sd198-27 photos.
    clamp = (qat or default_clamp) if clamp is None else clamp
    module = importlib.import_module(module_name)
    # weight_range: the grid of the runtime this stands in for (onnxruntime's 7-bit one, targets/onnx.py).
    narrow = {} if weight_range == FULL_WEIGHT_RANGE else {"weight_qmin": weight_range[0], "weight_qmax": weight_range[1]}
    config = module.get_symmetric_quantization_config(is_per_channel=True, is_qat=qat, **narrow)
    if qat:
        from dermmobile.targets import pattern_cache

        pattern_cache.install()  # QAT's conv + bn patterns: exported once per process, not on every call
        config = histogram_activations(unfused(config))
        if toolchain == "litert":
            _litert_qat_annotation_compat()
    elif observer != "histogram":  # histogram is both toolchains' default
        ctr = {"minmax": observers.MinMaxObserver, "moving-average": observers.MovingAverageMinMaxObserver}[observer]
        config = with_activations(config, ctr.with_args(eps=SCALE_FLOOR))
    float_layers = frozenset(float_layers)

    class Quantizer(getattr(module, class_name)):
        def annotate(self, model):
            model = super().annotate(model)
            if clamp:
                observe_after_clamps(model)
            set_weight_grids(model, layer_ranges or {})
            leave_float(model, float_layers)
            return model

    Quantizer.__name__ = f"Dermmobile{class_name}"
    return Quantizer().set_global(config)


def unfused(config):
    """The same QAT config with torchao's FakeQuantize in place of FusedMovingAvgObsFakeQuantize.

    Why: the fused kernel (torch.fused_moving_avg_obs_fake_quant) recomputes scale and zero
    point from the running range on every call, with ATen's formula, while convert_pt2e
    asks the observer (calculate_qparams): for per-channel symmetric weights in [-127, 127]
    the two disagree (range/127.5 against range/127, XNNPACK's 2**-12 floor ignored, zero
    points off 0). On a QAT Lite0 the converted graph then agreed with the fake-quantized
    one on 88 % of test photos. FakeQuantize trains with exactly the observer's numbers,
    the ones the exported int8 graph gets.
    """
    import dataclasses

    from torchao.quantization.pt2e.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize

    def swap(spec):
        ctr = getattr(spec, "observer_or_fake_quant_ctr", None)
        if ctr is None or getattr(getattr(ctr, "p", None), "func", None) is not FusedMovingAvgObsFakeQuantize:
            return spec
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(*ctr.p.args, **ctr.p.keywords))

    fields = ("input_activation", "output_activation", "weight", "bias")
    return dataclasses.replace(config, **{name: swap(getattr(config, name)) for name in fields})


def histogram_activations(config):
    """The QAT config with activation ranges from a histogram (the post-training default), not a moving min/max.

    The histogram accumulates over the observing epoch and its range search drops rare
    outliers. QAT of the reference Lite0 (sd198-27, 143 held-out photos, same seed and
    schedule, benchmarks/qat.py): each file sat 0.040-0.041 (mean |logit difference|) from its
    fake-quant model against 0.045 with moving min/max ranges, on both targets; the flips
    (TFLite 0 against 2, ExecuTorch 2 against 1) are near-ties either way. One rule for
    activation ranges, post-training and QAT; QAT's observing epoch costs 20-80 s more.
    """
    from torchao.quantization.pt2e import observer as observers
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize

    return with_activations(config, FakeQuantize.with_args(observer=observers.HistogramObserver, eps=SCALE_FLOOR))


def with_activations(config, ctr):
    """`config` with `ctr` (an observer or fake-quantize constructor) on every activation, input and output alike."""
    import dataclasses

    activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def _litert_qat_annotation_compat() -> None:
    """Let litert-torch's QAT conv+bn annotator run on this torchao.

    litert-torch 0.10 hands torchao's `_get_aten_graph_module_for_pattern` plain functions as
    patterns; torchao 0.18 exports them with torch.export, which takes modules only
    ("Expected `mod` to be an instance of `torch.nn.Module`"). Wrapping each function in
    torchao's own WrapperModule is what torchao does for its patterns. Idempotent.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = pt2e_quantizer_utils._get_aten_graph_module_for_pattern
    if getattr(original, "wraps_functions", False):
        return

    def patterns_as_modules(pattern, *args, **kwargs):
        return original(pattern if isinstance(pattern, torch.nn.Module) else WrapperModule(pattern), *args, **kwargs)

    patterns_as_modules.wraps_functions = True
    pt2e_quantizer_utils._get_aten_graph_module_for_pattern = patterns_as_modules


def clamp_aware(quantizer_class):
    """A subclass of a PT2E quantizer whose annotate() also applies observe_after_clamps."""

    class ClampAware(quantizer_class):
        def annotate(self, model):
            model = super().annotate(model)
            observe_after_clamps(model)
            return model

    ClampAware.__name__ = f"ClampAware{quantizer_class.__name__}"
    return ClampAware


def calibrated_int8(model, example, quantizer, images: np.ndarray, fold_quantize: bool):
    """Export, insert observers, run the calibration images one at a time (the graph is batch 1), convert.

    fold_quantize: True stores int8 weights (what ExecuTorch's XNNPACK lowering needs); False
    keeps float weights with quantize/dequantize pairs (what litert-torch's converter reads).
    """
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(model, (example,), strict=False).module(), quantizer)
    with torch.no_grad():
        for image in np.ascontiguousarray(images, dtype=np.float32):
            prepared(torch.from_numpy(image[None]))
    return move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=fold_quantize))


def converted_qat(model, fold_quantize: bool):
    """The int8 graph of a QAT checkpoint: its trained fake-quantize graph converted as it is, nothing re-calibrated.

    `model` is what load_checkpoint builds for a QAT checkpoint (dermmobile.qat.FakeQuantModel);
    a copy is converted, so the artifact is still checked against the fake-quantize model itself.
    """
    import copy

    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from dermmobile.qat import folding_with_graph_eps, set_mode
    from dermmobile.quantization import integer_forward
    from dermmobile.targets import pattern_cache

    pattern_cache.install()  # convert_pt2e's conv + bn folding exports 96 pattern graphs otherwise
    graph = copy.deepcopy(model.prepared)
    integer_forward.strip(graph)  # the runtime computes in integers itself; the emulation is for the fake-quantize model
    with folding_with_graph_eps(graph):
        converted = convert_pt2e(graph, fold_quantize=fold_quantize)
    set_mode(converted, training=False)  # not torchao's move_exported_model_to_eval: it resets eps (qat.set_mode)
    converted.training = False  # in eval form already; litert-torch warns about "training mode" otherwise
    # eval()/train() on an exported graph raise unless allowed; a wrapper's eval() must reach it harmlessly.
    return allow_exported_model_train_eval(converted)
