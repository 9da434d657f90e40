"""Export each of torchao's QAT pattern graphs once per process instead of on every call.

torchao turns every conv + batch-norm pattern it looks for into an aten graph with a strict
`torch.export` (`_get_aten_graph_module_for_pattern`, about 0.6 s each on a 2-core EPYC), and does
so again on every call: `prepare_qat_pt2e` (conv + bn fusion, and litert's and XNNPACK's QAT
annotators) and `convert_pt2e` (conv + bn folding: 4 convolution kinds x 12 pattern variants x
match and replacement = 96 exports). In a QAT test that converts one tiny checkpoint twice, 300
such exports took 199 of its 233 s. The graphs depend only on the pattern's code, the values it
closes over and the example inputs' shapes, so one export per distinct pattern serves them all;
each caller gets its own copy (the callers edit the graph they are given).

Only patterns whose identity is plain data (booleans, numbers, strings, functions) are cached;
anything else is exported as before.
"""

from __future__ import annotations

import copy
import functools
import sys
import types

# The modules that call the exporter by a name they imported: each gets the cached function.
_CALLERS = (
    "torchao.quantization.pt2e.utils",
    "torchao.quantization.pt2e.qat_utils",
    "torchao.quantization.pt2e.reference_representation_rewrite",
    "executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils",
    "litert_torch.quantize.pt2e_quantizer_utils",
)
_PLAIN = (bool, int, float, str, type(None), types.FunctionType, types.BuiltinFunctionType)


def install() -> None:
    """Route torchao's pattern exporter through the cache, in every loaded module that calls it. Idempotent; modules
    imported later take the cached function from torchao's utils, where they import it from."""
    import torchao.quantization.pt2e.utils as utils

    export = utils._get_aten_graph_module_for_pattern
    cached = export if getattr(export, "dermmobile_cache", None) is not None else _cached(export)
    for name in _CALLERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "_get_aten_graph_module_for_pattern", None) is export:
            module._get_aten_graph_module_for_pattern = cached


def _cached(export):
    graphs: dict = {}

    @functools.wraps(export)
    def export_once(pattern, example_inputs, is_cuda=False, **kwargs):
        key = _key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return export(pattern, example_inputs, is_cuda, **kwargs)
        if key not in graphs:
            graphs[key] = export(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(graphs[key])

    export_once.dermmobile_cache = graphs
    return export_once


def _key(pattern, example_inputs, is_cuda, kwargs) -> tuple | None:
    """What the exported graph depends on, or None when that cannot be told from plain data."""
    function = getattr(pattern, "fn", None) if type(pattern).__name__ == "WrapperModule" else pattern
    if not isinstance(function, types.FunctionType):
        return None
    try:
        closure = tuple(cell.cell_contents for cell in function.__closure__ or ())
    except ValueError:  # a closure variable not yet assigned
        return None
    key = (
        type(pattern).__name__,
        function.__code__,
        _plain(closure),
        _plain(function.__defaults__ or ()),
        _plain(sorted((function.__kwdefaults__ or {}).items())),
        tuple(_input_key(value) for value in example_inputs),
        tuple((name, _input_key(value)) for name, value in sorted(kwargs.items())),
        bool(is_cuda),
    )
    return None if _UNKNOWN in key[2:5] or _UNKNOWN in key[5] or _UNKNOWN in (v for _, v in key[6]) else key


_UNKNOWN = object()  # what is not plain data


def _input_key(value):
    """An example input by what export reads of it: a tensor's shape, dtype and device; plain data as itself."""
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    return _plain(value)


def _plain(value):
    """A hashable stand-in for `value` (its type with it: True is not 1) when it is plain data, nested in tuples and
    lists, else _UNKNOWN."""
    if isinstance(value, (tuple, list)):
        items = tuple(_plain(item) for item in value)
        return _UNKNOWN if _UNKNOWN in items else (type(value).__name__, items)
    if value is None or isinstance(value, _PLAIN):
        return (type(value).__name__, value)
    return _UNKNOWN
