"""The registry of export formats: one module per format, each exporting and loading its own files.

Modules here import nothing heavy at import time; converters and runtimes are imported
inside `export` and `load`, so listing targets is instant and a missing extra gives an
install hint instead of a traceback.
"""

from __future__ import annotations

import importlib

from dermmobile.errors import BadInputError
from dermmobile.targets.base import QUANTIZATIONS, Target

# name -> module; each module defines TARGET. Order is the order of `--target all`.
_MODULES = {
    "torchscript": "dermmobile.targets.torchscript",
    "onnx": "dermmobile.targets.onnx",
    "tflite": "dermmobile.targets.tflite",
    "coreml": "dermmobile.targets.coreml",
    "executorch": "dermmobile.targets.executorch",
}


def target_names() -> list[str]:
    return list(_MODULES)


def target_module(name: str) -> str:
    """The module that implements target `name` (it defines TARGET)."""
    if name not in _MODULES:
        raise BadInputError(f"unknown target {name!r}. Valid targets: {', '.join(target_names())}, all")
    return _MODULES[name]


def get_target(name: str) -> Target:
    return importlib.import_module(target_module(name)).TARGET


def valid_combinations() -> dict[str, list[str]]:
    return {name: [q for q in QUANTIZATIONS if q in get_target(name).quantizations] for name in target_names()}


def resolve(targets: str | list[str], quantize: str) -> list[Target]:
    """Expand `all` and refuse any target x quantization that does not exist, before any work.

    With `all`, targets lacking the quantization are left out (and named), unless none has it.
    """
    if quantize not in QUANTIZATIONS:
        raise BadInputError(f"unknown quantization {quantize!r}. Valid: {', '.join(QUANTIZATIONS)}")
    names = [targets] if isinstance(targets, str) else list(targets)
    if names == ["all"]:
        chosen = [get_target(n) for n in target_names() if quantize in get_target(n).quantizations]
        if not chosen:
            raise BadInputError(f"no target supports --quantize {quantize}")
        return chosen
    chosen = [get_target(n) for n in names]
    for target in chosen:
        if quantize not in target.quantizations:
            table = "; ".join(f"{n}: {', '.join(q)}" for n, q in valid_combinations().items())
            raise BadInputError(f"--target {target.name} --quantize {quantize} does not exist. Valid combinations: {table}")
    return chosen
