"""ExecuTorch: torch.export, lowered to the XNNPACK backend, written as a `.pte` program.

fp32, or int8 through PT2E (XNNPACKQuantizer, symmetric per-channel weights, per-tensor
activations calibrated on real images). The program takes one float32 NCHW image at a
time, as a phone app calls it; the Runtime loops over larger batches. I/O stays float32
in both variants: the quantize/dequantize steps sit inside the program.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from dermmobile.errors import require
from dermmobile.targets.base import FULL_WEIGHT_RANGE, ExportRequest, ExportResult, OpCounts, batched, package_version


def runtime_api():
    """`executorch.runtime`, imported without the exporter it does not use: 2.7 s instead of 9.7 on a 2-core EPYC.

    Why: its pybindings import `executorch.exir._warnings` (two warning classes), and importing that runs
    `executorch.exir`'s package init, which loads the whole exporter (torch._dynamo, inductor passes). Every
    command that opens a .pte pays it, twice with the crash-safe probe (dermmobile.runtime). Here the
    runtime is imported while `executorch.exir` is a bare package that only finds its submodules; it is
    removed afterwards, so a later `import executorch.exir` (the exporter) runs the real init. Should the
    runtime import anything else from exir, that is undone and the import runs the usual way.
    """
    import importlib
    import importlib.util
    import sys
    import types

    if "executorch.runtime" in sys.modules or "executorch.exir" in sys.modules:
        return importlib.import_module("executorch.runtime")
    import executorch

    def python_modules() -> set[str]:  # what a failed attempt leaves to undo (the native libraries stay loaded)
        prefixes = ("executorch.exir.", "executorch.runtime", "executorch.extension.pybindings.portable_lib")
        return {name for name in sys.modules if name.startswith(prefixes)}

    spec = importlib.util.find_spec("executorch.exir")
    bare = types.ModuleType("executorch.exir")
    bare.__path__ = list(spec.submodule_search_locations or []) if spec else []
    sys.modules["executorch.exir"] = bare
    try:
        api = importlib.import_module("executorch.runtime")
    except Exception:
        api = None
    finally:
        del sys.modules["executorch.exir"]
        if getattr(executorch, "exir", None) is bare:
            del executorch.exir
    if api is None or {n for n in python_modules() if n.startswith("executorch.exir.")} != {"executorch.exir._warnings"}:
        for name in python_modules():
            del sys.modules[name]
        api = importlib.import_module("executorch.runtime")
    return api


class ExecuTorchRuntime:
    name = "executorch"

    def __init__(self, path: Path, threads: int | None = None):
        require("executorch", "executorch")
        runtime = runtime_api().Runtime.get()
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)  # XNNPACK's pool is process-wide; this is its only knob
        self.program = runtime.load_program(Path(path))
        self.method = self.program.load_method("forward")
        self.batch_size = self.method.metadata.input_tensor_meta(0).sizes()[0]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute([torch.from_numpy(batch)])[0].float().numpy()

    def describe(self) -> list[str]:
        """Inputs and outputs as the ExecuTorch program's method metadata reports them (for `dermmobile inspect`)."""
        meta = self.method.metadata
        return [f"input {i}: {list(meta.input_tensor_meta(i).sizes())} {meta.input_tensor_meta(i).dtype()}"
                for i in range(meta.num_inputs())] + [
               f"output {i}: {list(meta.output_tensor_meta(i).sizes())} {meta.output_tensor_meta(i).dtype()}"
                for i in range(meta.num_outputs())]  # fmt: skip

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return batched(self._run, np.ascontiguousarray(batch, dtype=np.float32), self.batch_size)


class ExecuTorchTarget:
    name = "executorch"
    extension = ".pte"
    quantizations = frozenset({"none", "int8"})
    extra = "executorch"
    pt2e_toolchain = "xnnpack"  # int8 (and QAT) quantizer: targets/pt2e.build_quantizer

    @staticmethod
    def weight_range(layer=None) -> tuple[int, int]:
        return FULL_WEIGHT_RANGE

    # Measured: 2 of 30 bit-flipped .pte files made XNNPACK's loader abort the process (SIGABRT):
    # dermmobile.runtime loads such files in a child process first.
    load_may_crash = True

    def export(self, request: ExportRequest) -> ExportResult:
        torch = require("torch", "executorch")
        require("executorch", "executorch")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        request.check(self.name)
        example = (request.example_input(),)
        model = request.model.eval()
        if request.quantize == "int8":
            model = _quantize(model, request)
        program = torch.export.export(model, example, strict=False)
        with _pads_before_float_layers_stay_float():
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        Path(request.out_file).write_bytes(lowered.to_executorch().buffer)
        # Ops XNNPACK did not take run on ExecuTorch's portable kernels: slower, worth knowing.
        left = sorted(
            {str(node.target) for node in lowered.exported_program().graph.nodes if node.op == "call_function"}
            - {"executorch_call_delegate", "<built-in function getitem>"}
        )
        return ExportResult(
            input={"name": "image", "shape": request.input_shape, "dtype": "float32", "layout": "NCHW"},
            output={"name": "logits", "shape": [1, len(request.labels)], "dtype": "float32", "layout": ""},
            toolchain={name: package_version(name) for name in ("torch", "executorch", "torchao")},
            notes={"dynamic_batch": False, "backend": "XnnpackBackend", "ops_outside_xnnpack": left},
            op_counts=count_ops(lowered.exported_program().graph_module),
        )

    def load(self, path: Path, manifest, threads: int | None = None) -> ExecuTorchRuntime:
        return ExecuTorchRuntime(Path(path), threads)

    def simulation(self, request: ExportRequest):
        """int8 simulated in PyTorch with XNNPACK's PT2E quantizer (see dermmobile/quantization/simulate.py)."""
        from dermmobile.quantization.simulate import Simulation

        return Simulation(
            request.model, self.pt2e_toolchain, request.calibration, request.observer or OBSERVER, float_model=request.float_model
        )


@contextlib.contextmanager
def _pads_before_float_layers_stay_float():
    """Lower with XNNPACK's InsertPadQDQPass sparing the zero pads that feed only float layers.

    The pass gives every zero pad fed by an int8 tensor an int8 output, for the quantized
    convolution it expects after it. Before a layer the fallback left float (each depthwise
    convolution of EfficientNet-Lite has a "SAME" pad) that int8 output made the lowering
    fail ("Weight and Input should both be quantized"); spared, the pad runs in float.
    """
    from executorch.backends.xnnpack import _passes
    from executorch.exir.dialects._ops import ops as exir_ops

    pad, original = exir_ops.edge.aten.constant_pad_nd.default, _passes.InsertPadQDQPass

    def float_layer(node) -> bool:
        name = _op_name(node)
        return node.op == "call_function" and name in _COMPUTE_ARGS and not _dequantized(node.args[_COMPUTE_ARGS[name][1]])

    class SparingFloatPads(original):
        def call(self, graph_module):
            spared = {node: node.args for node in graph_module.graph.nodes
                      if node.target == pad and node.users and all(float_layer(user) for user in node.users)}  # fmt: skip
            for node, args in spared.items():
                node.args = (*args[:2], float("nan"))  # the pass leaves pads of a non-zero value alone
            try:
                return super().call(graph_module)
            finally:
                for node, args in spared.items():
                    node.args = args
                graph_module.recompile()

    _passes.InsertPadQDQPass = SparingFloatPads
    try:
        yield
    finally:
        _passes.InsertPadQDQPass = original


OBSERVER = "histogram"  # int8 activation observer; chosen by measurement, see README "int8 that passes its gate"
# Edge-dialect compute ops, and which of their arguments are (activations, weights).
_COMPUTE_ARGS = {"convolution": (0, 1), "linear": (0, 1), "mm": (0, 1), "bmm": (0, 1), "addmm": (1, 2)}
_SHAPE_ONLY = ("permute_copy", "view_copy", "t_copy", "expand_copy", "clone", "_to_copy")


def count_ops(graph_module) -> OpCounts:
    """Count compute ops in the lowered program, inside the XNNPACK delegates and outside, by their inputs' precision.

    The serialized .pte holds the delegates as opaque XNNPACK blobs; the lowered program that
    was serialized still shows each delegate's graph, with int8 weights and activations
    entering through dequantize nodes.
    """
    from executorch.exir.lowered_backend_module import get_lowered_backend_modules

    counts = OpCounts()
    graphs = [("portable", graph_module)]
    graphs += [("xnnpack", module.original_module.graph_module) for module in get_lowered_backend_modules(graph_module)]
    for where, graph in graphs:
        for node in graph.graph.nodes:
            name = _op_name(node)
            if node.op != "call_function" or name not in _COMPUTE_ARGS:
                continue
            activations, weights = (_dequantized(node.args[i]) for i in _COMPUTE_ARGS[name])
            counts.add(f"{where}:{name}", "int8" if activations and weights else "dynamic" if weights else "float")
    return counts


def _op_name(node) -> str:
    """ "convolution" from aten.convolution.default, or from "<EdgeOpOverload: aten.convolution.default>: schema = ..."."""
    text = str(node.target)
    if text.startswith("<EdgeOpOverload:"):
        text = text.removeprefix("<EdgeOpOverload:").split(">", 1)[0].strip()
    parts = text.split(".")
    return parts[-2] if len(parts) > 1 else parts[-1]


def _dequantized(value) -> bool:
    """True when `value` comes out of a dequantize node, looking through layout-only ops."""
    while hasattr(value, "op") and value.op == "call_function":
        name = _op_name(value)
        if name.startswith("dequantize"):
            return True
        if name not in _SHAPE_ONLY:
            return False
        value = value.args[0]
    return False


def _quantize(model, request: ExportRequest):
    """PT2E int8 with XNNPACK's quantizer, ReLU6 outputs observed after the clamp (see targets/pt2e.py);
    a QAT checkpoint's trained graph is converted as it is instead (dermmobile/qat.py)."""
    from dermmobile.targets.pt2e import build_quantizer, calibrated_int8, converted_qat

    if request.qat:
        return converted_qat(model, fold_quantize=True)
    quantizer = build_quantizer(TARGET.pt2e_toolchain, request.float_layers, request.observer or OBSERVER)
    return calibrated_int8(model, request.example_input(), quantizer, request.calibration, fold_quantize=True)


TARGET = ExecuTorchTarget()
