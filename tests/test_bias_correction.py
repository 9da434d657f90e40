"""Bias correction for int8 weight rounding: batch norm folding is exact, and the corrected biases remove the mean shift."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dermmobile.quantization.bias_correction import correct_biases, fold_batch_norms, quantize_weight  # noqa: E402


def _model():
    """Convolutions with batch norms (one depthwise, as in EfficientNet), kernels with one large weight each."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.01, 2)
                module.weight.uniform_(0.5, 3)
            if isinstance(module, nn.Conv2d):
                module.weight[:, :, 1, 1] *= 40  # the outlier that makes per-channel int8 round the rest coarsely
    return model.eval()


def _images(count=24):
    return np.random.default_rng(1).normal(0.5, 1, (count, 3, 16, 16)).astype(np.float32)


def _with_int8_weights(model, qrange):
    quantized = fold_batch_norms(model, torch.from_numpy(_images(1)))
    with torch.no_grad():
        for module in quantized.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.copy_(quantize_weight(module.weight, *qrange))
    return quantized


def test_folding_batch_norms_changes_no_output():
    model = _model()
    folded = fold_batch_norms(model, torch.from_numpy(_images(1)))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original model is left alone"
    x = torch.from_numpy(_images())
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-4)


def test_quantize_weight_is_symmetric_per_channel_on_the_given_grid():
    weight = torch.tensor([[1.0, -0.5, 0.26], [0.02, 0.01, -0.04]])
    quantized = quantize_weight(weight, -127, 127)
    scales = torch.tensor([[1.0 / 127], [0.04 / 127]])
    assert torch.allclose(quantized / scales, torch.round(quantized / scales), atol=1e-4)
    assert torch.allclose(quantized.abs().amax(dim=1), weight.abs().amax(dim=1))
    coarse = quantize_weight(weight, -64, 64)  # onnxruntime's reduced range: about half the levels
    assert (coarse - weight).abs().max() > (quantized - weight).abs().max()


@pytest.mark.parametrize("qrange", [(-127, 127), (-64, 64)])
def test_corrected_biases_remove_the_mean_shift_of_int8_weights(qrange):
    model = _model()
    calibration, held_out = _images(32), torch.from_numpy(_images(64)[32:])
    with torch.no_grad():
        reference = model(held_out)
        plain = _with_int8_weights(model, qrange)(held_out)
        corrected_model = correct_biases(model, calibration, qrange)
        corrected = _with_int8_weights(corrected_model, qrange)(held_out)
    plain_shift = (plain - reference).mean(0).abs().mean()
    corrected_shift = (corrected - reference).mean(0).abs().mean()
    assert corrected_shift < 0.5 * plain_shift, (plain_shift, corrected_shift)
    assert (corrected - reference).abs().mean() < (plain - reference).abs().mean()


def test_layers_left_in_float_keep_their_bias():
    model = _model()
    folded = fold_batch_norms(model, torch.from_numpy(_images(1)))
    corrected = correct_biases(model, _images(8), (-127, 127), float_layers=frozenset({"8"}))
    assert torch.equal(corrected[8].bias, folded[8].bias)
    assert not torch.equal(corrected[0].bias, folded[0].bias)


def test_folding_keeps_same_padding_convolutions_exact():
    """EfficientNet-Lite's SameConv2d pads in forward and is built without a bias; folded, it must use the new one."""
    from torch import nn

    from dermmobile.efficientnet_lite import SameConv2d

    model = nn.Sequential(SameConv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].bias.uniform_(-2, 2)
    folded = fold_batch_norms(model, torch.from_numpy(_images(1)))
    x = torch.from_numpy(_images(4))
    with torch.no_grad():
        assert folded[0].bias is not None and torch.allclose(model(x), folded(x), atol=1e-4)
