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
  transposes. Not used there.
"""

from __future__ import annotations

import numpy as np

# Convolution and linear outputs followed only by a clamp get observed after the clamp. QAT
# graphs keep batch norm until convert folds it: there the clamp follows the batch norm.
_PRODUCERS = ("conv2d", "linear", "batch_norm")
_CLAMPS = ("relu6", "hardtanh")


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

    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = move_exported_model_to_eval(convert_pt2e(copy.deepcopy(model.prepared), fold_quantize=fold_quantize))
    converted.training = False  # in eval form already; litert-torch warns about "training mode" otherwise
    # eval()/train() on an exported graph raise unless allowed; a wrapper's eval() must reach it harmlessly.
    return allow_exported_model_train_eval(converted)
