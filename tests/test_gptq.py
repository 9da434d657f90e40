"""GPTQ weight rounding: on the toolchain's grid with each channel's scale kept, a lower output error than nearest
rounding on the images it saw, no mean shift, and the toolchain's own quantization of its weights is exact."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dermmobile.quantization.bias_correction import fold_batch_norms, quantize_weight  # noqa: E402
from dermmobile.quantization.gptq import round_weights  # noqa: E402
from tests.test_bias_correction import _images, _model  # noqa: E402


def _layer_inputs(model, images) -> dict[str, torch.Tensor]:
    """Every convolution's and linear layer's input on `images`, from the float model."""
    seen = {}

    def keep(name):
        def hook(_module, inputs, _output):  # returns None: the output goes on unchanged
            seen[name] = inputs[0]

        return hook

    handles = [
        module.register_forward_hook(keep(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.no_grad():
        model(torch.from_numpy(images))
    for handle in handles:
        handle.remove()
    return seen


def _output_error(module, weight, bias, x) -> tuple[float, torch.Tensor]:
    """Squared error of `module` with (weight, bias) against its own weights on input x, and the mean shift."""
    with torch.no_grad():
        exact = module(x)
        changed = torch.func.functional_call(module, {"weight": weight, "bias": bias}, (x,))
    difference = changed - exact
    mean = difference.mean(dim=(0, 2, 3)) if difference.dim() == 4 else difference.mean(0)
    return float((difference**2).sum()), mean


@pytest.mark.parametrize("weight_range", [(-127, 127), (-64, 64)])
def test_weights_land_on_the_toolchain_grid_with_each_channel_scale_kept(weight_range):
    images = _images()
    folded = fold_batch_norms(_model(), torch.from_numpy(images[:1]))
    rounded, record = round_weights(_model(), images, weight_range)
    before = dict(folded.named_modules())
    assert record["layers"] == 3 and record["nearest_channels"] == 0 and record["skipped"] == []
    for name, module in rounded.named_modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            weight = module.weight.detach()
            # What the toolchain will compute from these weights: them, to float32 precision (its min/max finds the
            # scale GPTQ used, and every weight is a whole number of steps of it).
            original = before[name].weight.detach()
            assert torch.equal(weight.abs().flatten(1).amax(1), original.abs().flatten(1).amax(1)), name
            assert torch.allclose(quantize_weight(weight, *weight_range), weight, rtol=1e-6, atol=0), name
            scale = 2 * weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / (weight_range[1] - weight_range[0])
            steps = weight / scale
            assert (steps - steps.round()).abs().max() < 1e-4 and steps.abs().max() <= weight_range[1] + 1e-4, name
            assert not torch.equal(weight, quantize_weight(original, *weight_range)), f"{name}: plain nearest rounding"


def test_each_layer_moves_less_than_with_nearest_rounding_and_its_mean_not_at_all():
    """On the images it saw, with the float inputs it was given: GPTQ's purpose and its bias correction."""
    images = _images()
    folded = fold_batch_norms(_model(), torch.from_numpy(images[:1]))
    rounded, _ = round_weights(_model(), images, (-127, 127))
    inputs = _layer_inputs(folded, images)
    layers = dict(rounded.named_modules())
    for name, module in folded.named_modules():
        if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            continue
        nearest = quantize_weight(module.weight.detach(), -127, 127)
        nearest_error, _ = _output_error(module, nearest, module.bias, inputs[name])
        ours = layers[name]
        gptq_error, shift = _output_error(module, ours.weight.detach(), ours.bias.detach(), inputs[name])
        # Measured: the stem-like convolution 0.78x of nearest's error, the depthwise one (9 weights a channel, one
        # of them 40x the rest: little room to compensate) 0.90x, the linear layer 0.02x.
        assert gptq_error < 0.95 * nearest_error, (name, gptq_error, nearest_error)
        assert shift.abs().max() < 1e-4, name


def test_layers_left_float_and_paddings_im2col_cannot_read_are_left_alone():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(),
                          nn.Linear(4 * 16 * 16, 2)).eval()  # fmt: skip
    rounded, record = round_weights(model, _images(), (-127, 127), float_layers=frozenset({"4"}))
    assert record["skipped"] == ["0"] and record["layers"] == 1
    assert torch.equal(rounded[0].weight, model[0].weight) and torch.equal(rounded[4].weight, model[4].weight)
    assert torch.allclose(quantize_weight(rounded[2].weight.detach(), -127, 127), rounded[2].weight.detach(), rtol=1e-6)


def test_statistics_kept_between_calls_give_the_same_weights_without_running_the_images_again():
    """The exporter keeps each layer's input statistics per plan: a later call with other float layers (the next
    fallback attempt, or the next target) rounds exactly as a fresh call would, and runs no image through the model."""
    from unittest import mock

    import dermmobile.quantization.gptq as gptq

    images, kept = _images(), {}
    first, _ = round_weights(_model(), images, (-127, 127), float_layers=frozenset({"3"}), statistics=kept)
    assert set(kept) == {"0", "3", "8"}  # every layer, the float one too
    with mock.patch.object(gptq, "run_hooked", wraps=gptq.run_hooked) as passes:
        again, _ = round_weights(_model(), images, (-127, 127), float_layers=frozenset({"8"}), statistics=kept)
    assert passes.call_count == 0
    fresh, _ = round_weights(_model(), images, (-127, 127), float_layers=frozenset({"8"}))
    for layer in ("0", "3", "8"):
        assert torch.equal(again[int(layer)].weight, fresh[int(layer)].weight), layer
    assert not torch.equal(first[3].weight, again[3].weight)  # "3" was float in the first call, rounded now


def test_efficientnet_lite_same_padding_is_read_through_its_own_pad():
    """Lite0's convolutions pad in their forward; GPTQ reads their patches through SameConv2d.pad_input (stride 2,
    odd padding), so the mean shift it removes is the one the real layer sees."""
    from dermmobile.efficientnet_lite import SameConv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(SameConv2d(3, 6, 3, 2), torch.nn.ReLU(), SameConv2d(6, 6, 5, 2, groups=6)).eval()
    images = _images()
    rounded, record = round_weights(model, images, (-127, 127))
    assert record["layers"] == 2 and record["skipped"] == []
    inputs = _layer_inputs(model, images)
    for index in (0, 2):
        ours = rounded[index]
        _, shift = _output_error(model[index], ours.weight.detach(), ours.bias.detach(), inputs[str(index)])
        assert shift.abs().max() < 1e-4, index


@pytest.mark.parametrize("rounding", ["gptq", "nearest"])
def test_onnx_file_holds_exactly_the_weights_chosen(rounding, tiny_checkpoint, synthetic_root, tmp_path):
    """End to end through the CLI: onnxruntime's quantizer, given GPTQ's weights, writes int8 values whose scale times
    value are those weights (its own min/max finds GPTQ's scale), for every quantized convolution; with
    `--weight-rounding nearest`, the nearest rounding of the bias-corrected weights."""
    pytest.importorskip("onnxruntime")
    import json

    import onnx
    from onnx import numpy_helper

    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.cli import main
    from dermmobile.exporter import plan_export, prepare_int8_weights
    from dermmobile.quantization.options import Int8Options
    from dermmobile.targets import get_target

    out = tmp_path / "out"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--target", "onnx", "--quantize", "int8", "--calib-data",
            str(synthetic_root), "--calib-count", "18", "--weight-rounding", rounding, "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    (path,) = out.glob("*.onnx")
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert manifest["calibration"]["weight_rounding"] == rounding
    # The same plan as the CLI's (same images: the split is seeded), to recompute the weights it chose.
    checkpoint = load_checkpoint(tiny_checkpoint)
    plan = plan_export(checkpoint, "onnx", "int8", tmp_path / "plan", calib_data=synthetic_root, calib_count=18,
                       int8=Int8Options(weight_rounding=rounding))  # fmt: skip
    target = get_target("onnx")
    chosen = prepare_int8_weights(checkpoint.model, plan, target.weight_range, frozenset(manifest["float_layers"]))
    graph = onnx.load(path).graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    dequantized = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and values.get(node.input[0]) is not None:
            q, scale = values[node.input[0]], values[node.input[1]]
            if q.dtype == np.int8 and q.ndim == 4:
                dequantized[node.output[0]] = q.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    convolutions = [node for node in graph.node if node.op_type == "Conv" and node.input[1] in dequantized]
    ours = [m for m in chosen.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == len(ours) == 3
    for node, layer in zip(convolutions, ours, strict=True):
        weight = layer.weight.detach()
        expected = quantize_weight(weight, *target.weight_range(layer)).numpy()
        np.testing.assert_allclose(dequantized[node.input[1]], expected, rtol=1e-6, atol=1e-9)
        if rounding == "gptq":
            np.testing.assert_allclose(expected, weight.numpy(), rtol=1e-6, atol=1e-9)  # already on the grid


def test_an_unknown_weight_rounding_is_refused_before_any_work(tiny_checkpoint, synthetic_root, tmp_path):
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.errors import BadInputError
    from dermmobile.exporter import plan_export
    from dermmobile.quantization.options import Int8Options

    checkpoint = load_checkpoint(tiny_checkpoint)
    with pytest.raises(BadInputError, match="weight rounding 'gptq8' is not known; choose one of gptq, nearest"):
        plan_export(checkpoint, "onnx", "int8", tmp_path / "out", calib_data=synthetic_root,
                    int8=Int8Options(weight_rounding="gptq8"))  # fmt: skip
    assert not (tmp_path / "out").exists()
