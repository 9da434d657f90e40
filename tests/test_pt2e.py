"""The clamp-aware PT2E quantizer spends the int8 levels on what ReLU6 keeps, not on the conv's raw range."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dermmobile.targets.pt2e import calibrated_int8, clamp_aware  # noqa: E402

QUANTIZERS = {
    "xnnpack": ("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "XNNPACKQuantizer"),
    "litert": ("litert_torch.quantize.pt2e_quantizer", "PT2EQuantizer"),
}


class ConvReLU6(torch.nn.Module):
    """Raw convolution outputs span about ±60; ReLU6 keeps 0..6, like EfficientNet-Lite0's stem."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.bias.copy_(torch.linspace(-40, 40, 8))
        self.act = torch.nn.ReLU6()

    def forward(self, x):
        return self.act(self.conv(x))


def _quantizer(source: str, aware: bool):
    module_name, class_name = QUANTIZERS[source]
    module = pytest.importorskip(module_name)
    cls = getattr(module, class_name)
    config = module.get_symmetric_quantization_config(is_per_channel=True)
    return (clamp_aware(cls) if aware else cls)().set_global(config)


@pytest.mark.parametrize("source", sorted(QUANTIZERS))
def test_clamp_aware_quantizer_cuts_relu6_error(source):
    model = ConvReLU6().eval()
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(16, 3, 16, 16)).astype(np.float32)
    check = torch.from_numpy(rng.normal(size=(8, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        reference = model(check)
    errors = {}
    for aware in (False, True):
        quantized = calibrated_int8(model, check[:1], _quantizer(source, aware), calibration, fold_quantize=True)
        with torch.no_grad():
            out = torch.cat([quantized(image[None]) for image in check])
        errors[aware] = (out - reference).abs().mean().item()
    # Observing the clamp's 0..6 instead of the conv's ±60 makes each int8 step about ten times finer.
    assert errors[True] < errors[False] / 3, errors
    assert errors[True] < 6 / 255, errors


def test_clamp_with_a_second_user_keeps_the_conv_observer():
    """A conv output used elsewhere too must stay quantized as it is: nothing to move."""
    from dermmobile.targets.pt2e import observe_after_clamps

    class Branching(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return torch.nn.functional.relu6(y) + y

    quantizer = _quantizer("xnnpack", aware=False)
    graph_module = torch.export.export(Branching().eval(), (torch.zeros(1, 3, 4, 4),), strict=False).module()
    quantizer.annotate(graph_module)
    assert observe_after_clamps(graph_module) == 0
