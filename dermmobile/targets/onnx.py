"""ONNX: torch.onnx's dynamo exporter, onnxruntime's quantizers, and an onnxruntime Runtime.

Every artifact is one self-contained `.onnx` file (no external data) with a dynamic
batch axis, input "image" (float32 NCHW) and output "logits" (float32); quantized
variants keep float32 I/O and quantize inside the graph.

Loading needs onnxruntime only (no torch), so the bench runs where just the runtime is
installed. Before a file reaches onnxruntime, tensors stored as external data must name
files inside the model's folder (CVE-2024-27318). That check parses the file with the
`onnx` package; where `onnx` is not installed it is skipped and onnxruntime's own check
(since 1.17: absolute paths and paths escaping the model's folder are refused, measured
with 1.32) is the guard.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError, ExportFailedError, UnsafeFileError, require
from dermmobile.targets.base import FULL_WEIGHT_RANGE, ExportRequest, ExportResult, OpCounts, package_version

CALIBRATION_BATCH = 16
REDUCED_RANGE = (-64, 64)  # onnxruntime's symmetric int8 weight grid with reduce_range (7 bits); else FULL_WEIGHT_RANGE
# x86 CPUs without VNNI (AVX2 only) multiply uint8 x int8 through VPMADDUBSW, whose int16 sums
# saturate. Measured on EfficientNet-Lite0, 213 sd198 images, 2 threads, AMD EPYC (AVX2 only):
#   static QDQ per-channel   s8s8: 63 % top-1 agreement | s8s8, 7-bit weights: 89 %, 39 ms
#                            u8u8: 90 % but 223 ms (no fast kernel; fp32 is 45 ms)
#   dynamic per-channel      s8 weights: 68 %, 7-bit s8: 30 %, u8: 69 % (110 ms)
# With VNNI (Intel Xeon, AVX-512 VNNI) there is no saturation and 7-bit weights only cost
# accuracy: the reference Lite0 with bias correction, sd198-27, 393 gate photos: full range 98.2 %
# agreement (passes, no top-1 lost), 7 bits 95.7 % (fails even with 25 % of MACs in float).
# So static int8 uses full-range weights where the exporting CPU cannot saturate (VNNI, or not
# x86: ARM phones) and 7-bit weights elsewhere, and says which in the manifest; the parity gate
# measures the file on the exporting machine. Dynamic uses uint8 weights, its best here.
# Depthwise convolutions keep full-range weights there all the same: onnxruntime runs them in its
# own kernel, which widens to 32 bits before adding (tests/test_targets.py measures both kernels on
# the machine that runs the tests: a 1x1 convolution with every weight and input at its maximum is
# off by half its output on AMD EPYC, a depthwise one by 0.1 %).
# Tried and dropped: 8-bit weights for 1x1 convolutions with |q[2j]| + |q[2j+1]| <= 128 along the
# input channels (VPMADDUBSW adds exactly those pairs in int16, and 255 x 128 fits; measured so on
# that EPYC). On Lite0 4.4 % of such pairs exceed it, and GPTQ rounding within it left a mean logit
# error of 0.52 on the tuning photos (weights alone, in torch) against 0.054 with 7 bits.


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def describe(self) -> list[str]:
        """Inputs and outputs as onnxruntime reports them (for `dermmobile inspect`)."""
        return [f"{role}: {t.name} {t.shape} {t.type}" for role, ts in
                (("input", self.session.get_inputs()), ("output", self.session.get_outputs())) for t in ts]  # fmt: skip

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over an array of preprocessed real images."""

    def __init__(self, images: np.ndarray):
        # Batches of one size: onnxruntime's histogram calibrators (percentile, entropy) stack every batch's
        # tensors into one array and fail on a shorter last batch. The size divides the image count.
        size = max(d for d in range(1, CALIBRATION_BATCH + 1) if len(images) % d == 0) if len(images) else 1
        self.batches = iter([{"image": images[i : i + size]} for i in range(0, len(images), size)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


class OnnxTarget:
    name = "onnx"
    extension = ".onnx"
    quantizations = frozenset({"none", "fp16", "int8-dynamic", "int8"})
    extra = "onnx"

    def export(self, request: ExportRequest) -> ExportResult:
        torch = require("torch", "onnx")
        onnx = require("onnx", "onnx")
        request.check(self.name)
        out = Path(request.out_file)
        full_range = 0  # int8: how many layers kept 8-bit weights where the rest got 7
        with tempfile.TemporaryDirectory(prefix="dermmobile-onnx-") as tmp:
            fp32 = out if request.quantize == "none" else Path(tmp) / "fp32.onnx"
            program = torch.onnx.export(
                request.model.eval(),
                (request.example_input(),),
                dynamo=True,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            program.save(str(fp32), external_data=False)
            if request.quantize == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16
                from onnxruntime.transformers.onnx_model import OnnxModel

                # keep_io_types: callers keep feeding float32 and reading float32 logits. The converter
                # appends the input's Cast node after its consumers; onnx.checker wants them sorted.
                half = OnnxModel(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True))
                half.topological_sort()
                onnx.save_model(half.model, str(out))
            elif request.quantize == "int8-dynamic":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                _refuse_dynamic_for_convolutions(onnx.load(str(fp32)))
                # ONNX Runtime's guidance: dynamic quantization is for MatMul/Gemm (transformers, RNNs).
                quantize_dynamic(fp32, out, op_types_to_quantize=list(DYNAMIC_OPS), per_channel=True,
                                 weight_type=QuantType.QUInt8)  # fmt: skip
            elif request.quantize == "int8":
                full_range = _quantize_static(fp32, out, request, onnx.load(str(fp32)))
        onnx.checker.check_model(str(out), full_check=True)
        model = onnx.load(str(out), load_external_data=False)
        return ExportResult(
            input={"name": "image", "shape": request.input_shape, "dtype": "float32", "layout": "NCHW"},
            output={"name": "logits", "shape": [1, len(request.labels)], "dtype": "float32", "layout": ""},
            toolchain={name: package_version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")},
            notes={"dynamic_batch": True, "opset": _opset(model), **_weight_note(request.quantize, full_range)},
            op_counts=count_ops(model),
        )

    @staticmethod
    def weight_range(layer=None) -> tuple[int, int]:
        """The int8 weight grid of `layer` (None: a layer onnxruntime multiplies in its int8 GEMM) on this machine,
        see REDUCED_RANGE above: what GPTQ rounds to and the simulation stands in with."""
        return FULL_WEIGHT_RANGE if is_depthwise(layer) or not int8_saturates() else REDUCED_RANGE

    def load(self, path: Path, manifest, threads: int | None = None) -> OnnxRuntime:
        check_external_data(Path(path))
        return OnnxRuntime(Path(path), threads)

    def simulation(self, request: ExportRequest):
        """A PT2E stand-in for onnxruntime's static int8 (XNNPACK's annotation, min/max ranges, this machine's
        weight grid), to rank layers by. It is not onnxruntime's own arithmetic: the fallback checks every
        choice on the real artifact.
        """
        from dermmobile.quantization.simulate import Simulation

        return Simulation(
            request.model,
            "xnnpack",
            request.calibration,
            "minmax",
            weight_range=self.weight_range,
            float_model=request.float_model,
        )


# onnxruntime's calibration methods by the names users pick (`--observer`). Not offered: "distribution", whose
# ranges put Lite0's plain int8 at 3.6 % agreement (mean logit error 12.6) on the tuning photos.
OBSERVERS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Chosen on the tuning photos' mean logit error (reference Lite0, logits layer float): percentile 0.0868 against
# minmax and entropy 0.0870; with the stem float too, 0.0651 against 0.0665 (README "int8 that passes its gate").
# Percentile clips activation outliers, as the histogram observer of the PT2E targets does.
OBSERVER = "percentile"
DYNAMIC_OPS = ("MatMul", "Gemm")
_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_REQUANTIZED = ("Conv", "ConvTranspose", "Gemm")  # the float layers onnxruntime's WeightBiasQuantization would quantize


def _quantize_static(fp32: Path, out: Path, request: ExportRequest, model) -> int:
    """Static QDQ int8, per-channel weights; the layers in request.float_layers stay float (nodes_to_exclude).
    Returns how many layers kept 8-bit weights where the usual grid is 7 bits."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    observer = request.observer or OBSERVER
    if observer not in OBSERVERS:
        raise BadInputError(f"unknown onnx observer {observer!r}; valid: {', '.join(OBSERVERS)}")
    excluded = layer_nodes(model, request.float_layers)
    reduce_range = OnnxTarget.weight_range() == REDUCED_RANGE
    # Where the usual grid is 7 bits, the quantized layers whose own grid is the full one (OnnxTarget.weight_range)
    # get reduce_range turned off for their weight (`<layer>.weight`, see layer_nodes).
    initializers = {tensor.name for tensor in model.graph.initializer}
    full_range = [name for name, module in request.model.named_modules()
                  if reduce_range and f"{name}.weight" in initializers and name not in request.float_layers
                  and OnnxTarget.weight_range(module) == FULL_WEIGHT_RANGE]  # fmt: skip
    overrides = {f"{name}.weight": [{"axis": 0, "reduce_range": False}] for name in full_range}
    quantize_static(
        fp32,
        out,
        _Calibration(np.ascontiguousarray(request.calibration, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=getattr(CalibrationMethod, OBSERVERS[observer]),
        extra_options={"TensorQuantOverrides": overrides} if overrides else {},
    )
    if excluded:
        import onnx

        quantized = onnx.load(str(out))
        keep_float(quantized, excluded)
        onnx.save_model(quantized, str(out))
    return len(full_range)


def is_depthwise(layer) -> bool:
    """A depthwise convolution (one input and one output channel per group): onnxruntime's depthwise kernel runs it."""
    groups = getattr(layer, "groups", 1)
    return groups > 1 and layer.in_channels == groups and layer.out_channels == groups


def keep_float(model, nodes: list[str]) -> None:
    """Make the float layers stay float in onnxruntime: each excluded node fed by a per-tensor DequantizeLinear gets
    its own per-channel copy of that DequantizeLinear (the same scale and zero point on every channel).

    Why: at session start, onnxruntime's WeightBiasQuantization optimizer (basic level, on by default) quantizes the
    float weights of any Conv or Gemm whose input comes from a per-tensor DequantizeLinear, per tensor and to int8,
    with its bias in int32. A layer left float by `nodes_to_exclude` usually has such an input, so it ran with
    per-tensor int8 weights while the manifest called it float: on the reference Lite0, `_blocks.1._expand_conv`
    "in float" raised the tuning photos' mean logit error from 0.065 to 0.107 (0.064 with that optimizer off).
    The optimizer only takes a scalar input scale; a per-channel one with equal values is the same arithmetic.
    """
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    wanted = set(nodes)
    # From the end, so that inserting a copy before a node never moves a node still to be visited.
    for position, node in reversed(list(enumerate(model.graph.node))):
        if node.name not in wanted or node.op_type not in _REQUANTIZED or node.input[1] not in initializers:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear" or source.input[1] not in initializers:
            continue
        scale = numpy_helper.to_array(initializers[source.input[1]])
        if scale.size != 1:
            continue  # already per-channel: the optimizer leaves it alone
        channels = _input_channels(node, initializers[node.input[1]].dims)
        if channels is None:
            continue
        inputs = [source.input[0]]
        for index, suffix in ((1, "scale"), (2, "zero_point")):
            if len(source.input) > index and source.input[index]:
                value = numpy_helper.to_array(initializers[source.input[index]]).reshape(-1)
                tiled = numpy_helper.from_array(np.repeat(value, channels), f"{node.name}_float_input_{suffix}")
                model.graph.initializer.append(tiled)
                inputs.append(tiled.name)
        copy = helper.make_node("DequantizeLinear", inputs, [f"{node.name}_float_input"], name=f"{node.name}_float_input",
                                axis=1)  # fmt: skip
        model.graph.node.insert(position, copy)
        node.input[0] = copy.output[0]


def _input_channels(node, weight_shape) -> int | None:
    """The channel count of a compute node's input along axis 1, from its weight's shape (None: a Gemm whose input is
    transposed, whose axis 1 is not its channels; torch.onnx never writes one)."""
    attributes = {attribute.name: attribute for attribute in node.attribute}
    if node.op_type == "Gemm":
        if "transA" in attributes and attributes["transA"].i:
            return None
        transposed = "transB" in attributes and attributes["transB"].i
        return int(weight_shape[1] if transposed else weight_shape[0])
    groups = attributes["group"].i if "group" in attributes else 1
    if node.op_type == "ConvTranspose":
        return int(weight_shape[0])
    return int(weight_shape[1] * groups)


def _weight_note(quantize: str, full_range: int) -> dict:
    """The manifest's account of the weight grid; `full_range`: how many layers kept 8 bits where the rest got 7."""
    if quantize != "int8":
        return {}
    bits = 7 if OnnxTarget.weight_range() == REDUCED_RANGE else 8
    why = ("this x86 CPU has no VNNI: full-range weights can saturate onnxruntime's int8 GEMM, so its layers get 7 "
           "bits; the depthwise convolutions (weight_bits_8_layers) keep 8: their kernel cannot saturate" if bits == 7 else
           "full range: on an x86 CPU without VNNI onnxruntime may saturate; re-export there and check its gate")  # fmt: skip
    return {"weight_bits": bits, "weight_bits_why": why, **({"weight_bits_8_layers": full_range} if bits == 7 else {})}


def int8_saturates(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on x86 CPUs without VNNI, where onnxruntime's uint8 x int8 kernels can saturate on full-range weights."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # ARM and others: no VPMADDUBSW
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return True  # cannot tell: the grid that is safe everywhere
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def layer_nodes(model, layers) -> list[str]:
    """The ONNX node of each PyTorch layer: the compute node whose weight initializer is `<layer>.weight`."""
    wanted = {f"{name}.weight": name for name in layers}
    found = {wanted[i]: node.name for node in model.graph.node if node.op_type in _COMPUTE for i in node.input if i in wanted}
    missing = sorted(set(layers) - set(found))
    if missing:
        raise ExportFailedError(f"onnx: no node computes layer(s) {', '.join(missing[:5])}; cannot leave them in float")
    return sorted(found.values())


def _refuse_dynamic_for_convolutions(model) -> None:
    """Refuse int8-dynamic where convolutions carry the model: onnxruntime would leave nearly all of it float."""
    weights = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    sizes = {op: 0 for op in _COMPUTE}
    for node in model.graph.node:
        if node.op_type in sizes and len(node.input) > 1:
            sizes[node.op_type] += weights.get(node.input[1], 0)
    matmul, total = sizes["MatMul"] + sizes["Gemm"], sum(sizes.values())
    if total and matmul / total < 0.5:
        raise BadInputError(
            f"onnx --quantize int8-dynamic: this model's weights are {1 - matmul / total:.0%} convolution. "
            "ONNX Runtime quantizes only MatMul/Gemm dynamically (its guidance: dynamic for transformers and RNNs, "
            "static for CNNs; dynamic convolutions measured 70.6 % agreement on EfficientNet-Lite0). "
            "Use --quantize int8 (static, per-channel, calibrated on --calib-data)"
        )


def count_ops(model) -> OpCounts:
    """Count compute nodes by precision: QDQ nodes fed by DequantizeLinear, QLinear and Integer operators."""
    producers = {output: node for node in model.graph.node for output in node.output}

    def dequantized(name: str) -> bool:
        node = producers.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    counts = OpCounts()
    for node in model.graph.node:
        if node.op_type in ("QLinearConv", "QLinearMatMul"):
            counts.add(node.op_type, "int8")
        elif node.op_type in ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"):
            counts.add(node.op_type, "dynamic")
        elif node.op_type in _COMPUTE and len(node.input) > 1:
            activations, weights = dequantized(node.input[0]), dequantized(node.input[1])
            counts.add(node.op_type, "int8" if activations and weights else "dynamic" if weights else "float")
    return counts


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_external_data(path: Path) -> None:
    """Refuse a model whose external-data tensors name files outside its own folder (CVE-2024-27318),
    or files that are not regular files (a FIFO would hang onnxruntime, a device would feed it forever)."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:
        return  # onnxruntime refuses escaping paths itself; see the module docstring
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: the file is not an ONNX model
        raise BadInputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); re-export it") from None
    folder = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        resolved = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in resolved.parents:
            raise UnsafeFileError(
                f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, outside the model's folder "
                f"{folder}; refused (CVE-2024-27318). Load only models whose external data sits beside them, "
                "or re-export it with dermmobile (its files hold all data inline)"
            )
        if os.path.lexists(folder / location):  # a missing file is onnxruntime's to report
            from dermmobile.readers import check_regular

            check_regular(folder / location, f"{path}: external data of tensor {tensor.name!r},")


TARGET = OnnxTarget()
