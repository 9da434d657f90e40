"""TFLite (LiteRT): litert-torch converts without TensorFlow, ai-edge-quantizer and PT2E quantize, ai-edge-litert runs.

Every artifact is one `.tflite` file with batch 1 (what a phone app feeds) and one
signature, `serving_default`, with input "image" (NCHW, or NHWC for Android via
`to_channel_last_io`) and output "logits".

- none: float32 throughout.
- fp16: weights stored as float16 (ai-edge-quantizer FLOAT_CASTING); the runtime
  computes in float32, so it halves the file, not the latency.
- int8-dynamic: int8 weights, activations quantized on the fly (`dynamic_wi8_afp32`).
- int8: full integer, int8 input and output, activation ranges calibrated by PT2E on
  real images; the runtime quantizes images and dequantizes logits with the scale and
  zero point recorded in the manifest.

Loading needs ai-edge-litert only (no torch), so the bench runs where just the runtime is installed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError, ExportFailedError, require
from dermmobile.targets.base import (
    FULL_WEIGHT_RANGE,
    ExportRequest,
    ExportResult,
    OpCounts,
    batched,
    dequantize,
    package_version,
    quantize,
    to_layout,
)

LAYOUTS = ("NCHW", "NHWC")
OBSERVER = "histogram"  # int8 activation observer; chosen by measurement, see README "int8 that passes its gate"
# int8 is what the exporter writes; uint8 is the I/O of tflite_uint8_io's twin for LiteRT.js.
QUANTIZED_IO = (np.int8, np.uint8)
TOOLCHAIN = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torchao")


class TFLiteRuntime:
    name = "tflite"

    def __init__(self, path: Path, manifest, threads: int | None = None):
        interpreter = require("ai_edge_litert.interpreter", "tflite")
        self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.layout = manifest.input.layout or "NCHW"
        self.input_q = (manifest.input.scale, manifest.input.zero_point)
        self.output_q = (manifest.output.scale, manifest.output.zero_point)
        self.quantized = self.input["dtype"] in QUANTIZED_IO
        if self.quantized and manifest.input.scale is None:
            raise BadInputError(f"{path}: the model takes quantized input but its manifest has no input scale; re-export it")
        # One image's input in the file's layout (float32) and dtype, rewritten for every image: see _feed.
        shape = tuple(int(v) for v in self.input["shape"])
        self.staging = np.empty(shape, np.float32) if self.quantized or self.layout == "NHWC" else None
        self.feed = np.empty(shape, self.input["dtype"]) if self.quantized else None

    def describe(self) -> list[str]:
        """Inputs and outputs as the LiteRT interpreter reports them (for `dermmobile inspect`)."""
        return [
            f"{role}: {d['name']} {d['shape'].tolist()} {np.dtype(d['dtype']).name} quantization={d['quantization']}"
            for role, d in (("input", self.input), ("output", self.output))
        ]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if len(batch) == 1:  # what an app (and the bench's latency loop) does: no batching around it
            return self._predict_one(batch)
        if not len(batch):
            return np.zeros((0, int(self.output["shape"][-1])), np.float32)
        # The file is built for batch 1; looping keeps the graph exactly as exported.
        return batched(self._predict_one, batch, 1)

    def _predict_one(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], self._feed(image))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])
        return dequantize(logits, *self.output_q) if self.output["dtype"] in QUANTIZED_IO else logits.astype(np.float32)

    def _feed(self, image: np.ndarray) -> np.ndarray:
        """The image in the file's layout and dtype, written into this runtime's own buffers.

        Reused buffers rather than fresh arrays per call: a 224 x 224 image is 600 KB as float32,
        and a new array of that size is new pages, faulted in on every call. With them, int8
        input costs 0.11 ms per image (NHWC 0.17) where it cost 0.42 (0.82): measured, 2-core x86.
        """
        values = to_layout(image, self.layout, out=self.staging)
        if self.quantized:
            return quantize(values, self.input["dtype"], *self.input_q, out=self.feed, work=self.staging)
        return np.ascontiguousarray(values)


class TFLiteTarget:
    name = "tflite"
    extension = ".tflite"
    quantizations = frozenset({"none", "fp16", "int8-dynamic", "int8"})
    extra = "tflite"
    pt2e_toolchain = "litert"  # int8 (and QAT) quantizer: targets/pt2e.build_quantizer

    @staticmethod
    def weight_range(layer=None) -> tuple[int, int]:
        return FULL_WEIGHT_RANGE

    def export(self, request: ExportRequest) -> ExportResult:
        torch = require("torch", "tflite")
        request.check(self.name, LAYOUTS)
        # litert-torch prints a progress tree per conversion; keep it for those who ask for it.
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
        litert_torch = require("litert_torch", "tflite")

        base, quant_config = request.model.eval(), None
        if request.qat:  # int8 of a QAT checkpoint: its trained graph converted, the same quantizer's QAT form
            from litert_torch.quantize.quant_config import QuantConfig

            from dermmobile.qat import qat_quantizer
            from dermmobile.targets.pt2e import converted_qat

            base = converted_qat(base, fold_quantize=False)
            # The quantizer QAT trained with (the same float layers), so the converter reads its annotations.
            quant_config = QuantConfig(pt2e_quantizer=qat_quantizer(self.name, request.float_layers))
        model = _with_names(base).eval()
        if request.layout == "NHWC":
            model = litert_torch.to_channel_last_io(model, args=[0]).eval()
        example = torch.from_numpy(to_layout(request.example_input().numpy(), request.layout))
        if request.quantize == "int8" and not request.qat:
            images = to_layout(np.ascontiguousarray(request.calibration, dtype=np.float32), request.layout)
            float_layers = {module_prefix(model, request.model) + name for name in request.float_layers}
            model, quant_config = _pt2e_int8(model, example, images, float_layers, request.observer or OBSERVER)
        # Layers left float need strict QDQ: by default the converter also quantizes a float op whose
        # neighbours are quantized (a float convolution between int8 tensors came out int8).
        strict = request.quantize == "int8" and bool(request.float_layers)
        with torch.no_grad(), _strict_qdq(strict):
            content = litert_torch.convert(model, (example,), quant_config=quant_config).model_content()
        if request.quantize in ("fp16", "int8-dynamic"):
            content = _ai_edge_quantize(content, request.quantize)
        out = Path(request.out_file)
        out.write_bytes(content)

        interpreter = require("ai_edge_litert.interpreter", "tflite").Interpreter(model_path=str(out))
        notes = {"dynamic_batch": False, "signature": "serving_default"}
        if request.quantize == "fp16":
            notes["fp16"] = "weights stored as float16, dequantized at load: x86 CPUs compute in float32"
        if request.quantize == "int8-dynamic":
            notes["int8"] = "int8 weights (per channel); float32 I/O, activations quantized per inference by the kernels"
        image = _tensor_spec(interpreter.get_input_details()[0], "image", request.layout)
        logits = _tensor_spec(interpreter.get_output_details()[0], "logits", "")
        if request.quantize == "int8":  # float I/O when layers are left float (strict QDQ quantizes inside the file)
            notes["int8"] = (f"PT2E static int8 (per-channel weights), {image['dtype']} input and {logits['dtype']} "
                             "output; int8 I/O carries its scale")  # fmt: skip
        return ExportResult(
            input=image,
            output=logits,
            toolchain={name: package_version(name) for name in TOOLCHAIN},
            notes=notes,
            op_counts=count_ops(out),
        )

    def load(self, path: Path, manifest, threads: int | None = None) -> TFLiteRuntime:
        return TFLiteRuntime(Path(path), manifest, threads)

    def simulation(self, request: ExportRequest):
        """int8 simulated in PyTorch with litert's own PT2E quantizer (see dermmobile/quantization/simulate.py).

        With ReLU6 observed after the clamp: litert-torch's converter fuses each ReLU6 into its
        convolution and the file keeps only the clamp's range. Simulating the unfused graph
        (the convolution's raw range too) read 84 % agreement where the file agreed on 98 %.
        """
        from dermmobile.quantization.simulate import Simulation

        observer = request.observer or OBSERVER
        return Simulation(
            request.model, self.pt2e_toolchain, request.calibration, observer, clamp=True, float_model=request.float_model
        )


# Compute ops, and the operand that carries the activations' and the weights' type.
_COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}


def count_ops(path: Path) -> OpCounts:
    """Count the compute ops of a .tflite file by the types of their input and weight tensors."""
    interpreter = require("ai_edge_litert.interpreter", "tflite")
    # Without the default XNNPACK delegate, the op list is the file's own, not the delegate's rewrite.
    reader = interpreter.Interpreter(
        model_path=str(path), experimental_op_resolver_type=interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    counts = OpCounts()
    for op in reader._get_ops_details():  # the public API has no op list; this private one is stable since TF 2.5
        if op["op_name"] not in _COMPUTE_OPS or len(op["operand_types"]) < 2:
            continue
        activations, weights = (np.dtype(t) for t in op["operand_types"][:2])
        kind = "float" if weights.kind == "f" else "dynamic" if activations.kind == "f" else "int8"
        counts.add(op["op_name"], kind)
    return counts


def module_prefix(wrapper, inner) -> str:
    """The dotted path of `inner` inside `wrapper` ("inner." here), so layer names still find their modules."""
    path = next(name for name, module in wrapper.named_modules() if module is inner)
    return f"{path}." if path else ""


def _with_names(model):
    """Wrap the model so the TFLite signature reads `image` -> `logits`, the names the manifest and apps use."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image):
            return {"logits": self.inner(image)}

    return Named(model)


@contextlib.contextmanager
def _strict_qdq(enabled: bool):
    """Run litert-torch's converter passes with `strict_qdq_mode`: only ops with explicit quantize/dequantize
    pairs become int8. litert-torch does not expose the flag, so its call into the converter is wrapped."""
    if not enabled:
        yield
        return
    from litert_torch._convert import litert_converter

    passes = litert_converter.converter_api_ext.run_convert_to_tfl_passes
    if not hasattr(litert_converter.converter_api_ext.ConvertToTFLConfig(), "strict_qdq_mode"):
        raise ExportFailedError(
            "this litert-torch's converter has no strict QDQ mode, so layers cannot be kept float in TFLite int8; "
            "install the pinned version (pip install -e '.[tflite]') or export with --no-fallback"
        )

    def strict_passes(module, pass_manager, config):
        config.strict_qdq_mode = True
        return passes(module, pass_manager, config)

    litert_converter.converter_api_ext.run_convert_to_tfl_passes = strict_passes
    try:
        yield
    finally:
        litert_converter.converter_api_ext.run_convert_to_tfl_passes = passes


def _pt2e_int8(model, example, images: np.ndarray, float_layers: set[str], observer: str):
    """Static int8 by PT2E: observe activation ranges on the calibration images, then fold in the scales."""
    from litert_torch.quantize.quant_config import QuantConfig

    from dermmobile.targets.pt2e import build_quantizer, calibrated_int8

    # Not clamp-aware: litert-torch's converter fuses ReLU6 by itself, and a moved observer
    # made it keep 33 layout transposes (30 % slower for +0.3 points; see targets/pt2e.py).
    quantizer = build_quantizer(TARGET.pt2e_toolchain, frozenset(float_layers), observer)
    quantized = calibrated_int8(model, example, quantizer, images, fold_quantize=False)
    quantized.training = False  # batch norm is already in eval form; this silences litert-torch's "training mode" warning
    return quantized, QuantConfig(pt2e_quantizer=quantizer)


def _ai_edge_quantize(content: bytes, quantize: str) -> bytes:
    """Post-conversion weight quantization of a float .tflite by ai-edge-quantizer."""
    require("ai_edge_quantizer", "tflite")
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager
    from ai_edge_quantizer.quantizer import Quantizer

    if quantize == "fp16":
        # No ready-made fp16 recipe exists: FLOAT_CASTING with 16 float bits is its weight-only fp16 path.
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
        chosen = manager.get_quantization_recipe()
    else:
        chosen = recipe.dynamic_wi8_afp32()
    # Its size report goes to stdout; the manifest records the size instead.
    result = Quantizer(bytearray(content), chosen).quantize(enable_progress_bar=False, enable_progress_report=False)
    if result.quantized_model is None:
        raise ExportFailedError(f"ai-edge-quantizer returned no model for {quantize}; try --quantize none")
    return bytes(result.quantized_model)


def _tensor_spec(details: dict, name: str, layout: str) -> dict:
    """Manifest fields from the interpreter's own tensor details, so the numbers are those the runtime uses."""
    dtype = np.dtype(details["dtype"]).name
    spec = {"name": name, "shape": [int(v) for v in details["shape"]], "dtype": dtype, "layout": layout}
    if dtype == "int8":
        scale, zero_point = details["quantization"]
        spec |= {"scale": float(scale), "zero_point": int(zero_point)}
    return spec


TARGET = TFLiteTarget()
