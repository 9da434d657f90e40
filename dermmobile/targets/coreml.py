"""Core ML: coremltools converts a torch.export program to an ML Program package (`.mlpackage`).

The package is a folder. Input "image": float32 1x3xHxW, normalized exactly as the
manifest's preprocessing says (a TensorType, not an ImageType, so it follows the same
contract as every other Runtime). It is a Core ML classifier: `classLabel` (top label)
and `classLabel_probs` (label -> softmax probability) for Xcode and Vision, plus
`logits`, kept as an output because the classifier outputs hold only probabilities and
parity is measured on logits.

Precision, set explicitly because Core ML's own default is float16 compute:
- none: compute_precision FLOAT32, a like-for-like copy of the PyTorch model. The Neural
  Engine computes only in float16, so this one runs on CPU/GPU.
- fp16: compute_precision FLOAT16 (weights and activations), what the Neural Engine runs.
- int8-dynamic: int8 weights (linear_quantize_weights, per channel, symmetric) computed in
  FLOAT32: Core ML has no dynamic-range activation quantization, so this is weight-only
  int8, and coremltools 9.0 cannot quantize the weights of a FLOAT16 classifier (ValueError
  "Unknown map from SSA type ... list to Proto type" when it re-serializes the label list).
- int8 (activations) is not offered: coremltools' CoreMLQuantizer imports
  `torch.ao.quantization.quantizer`, which torch 2.11+ no longer has, and
  `linear_quantize_activations` calibrates by running the model, which needs macOS
  (measured with coremltools 9.0 and torch 2.14.1 on Linux).

Conversion runs anywhere; prediction needs macOS. On other systems `load` says so and
parity is recorded as not run: outputs are never faked.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError, ExportFailedError, MissingBackendError, require
from dermmobile.targets.base import ExportRequest, ExportResult, batched, package_version

DISCLAIMER = "Research tool, not a diagnosis: not a medical device and not validated for clinical use."
PRECISION = {"none": "FLOAT32", "fp16": "FLOAT16", "int8-dynamic": "FLOAT32"}


class CoreMLRuntime:
    name = "coreml"

    def __init__(self, path: Path, manifest):
        ct = require("coremltools", "coreml")
        self.model = ct.models.MLModel(str(path))
        self.classes = len(manifest.labels)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if not len(batch):
            return np.zeros((0, self.classes), np.float32)
        # The package is built for batch 1: a classifier's classLabel is one label per call.
        return batched(self._predict_one, np.asarray(batch, dtype=np.float32), 1)

    def _predict_one(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict({"image": image})["logits"], dtype=np.float32).reshape(1, -1)


class CoreMLTarget:
    name = "coreml"
    extension = ".mlpackage"
    quantizations = frozenset(PRECISION)  # no "int8": see the module docstring
    extra = "coreml"

    def export(self, request: ExportRequest) -> ExportResult:
        torch = require("torch", "coreml")
        ct = require("coremltools", "coreml")
        request.check(self.name)
        if request.quantize not in self.quantizations:
            raise BadInputError(
                f"coreml has no --quantize {request.quantize}: activation int8 cannot be built on this stack (see "
                "dermmobile/targets/coreml.py); use int8-dynamic (int8 weights) or the tflite/onnx/executorch int8"
            )
        example = request.example_input()
        try:
            program = torch.export.export(_with_probabilities(request.model.eval()), (example,)).run_decompositions({})
        except Exception as exc:  # torch.export raises many types for unsupported Python in forward()
            raise ExportFailedError(
                f"torch.export could not capture {request.arch} for Core ML ({type(exc).__name__}: {exc}); "
                "the model's forward() must be exportable (no data-dependent Python control flow)"
            ) from exc
        # torch.export names outputs after the ops that made them (e.g. "linear", "softmax").
        logits_name, probs_name = program.graph_signature.user_outputs
        model = ct.convert(
            program,
            inputs=[ct.TensorType(name="image", shape=tuple(example.shape), dtype=np.float32)],
            classifier_config=ct.ClassifierConfig(list(request.labels), predicted_probabilities_output=probs_name),
            convert_to="mlprogram",
            compute_precision=getattr(ct.precision, PRECISION[request.quantize]),
        )
        if request.quantize == "int8-dynamic":
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
            # Pretrained nets have all-zero channels (5 in EfficientNet-Lite0): scale 0 makes numpy warn on 0/0,
            # yet they dequantize to exactly 0, so the warning is noise.
            with np.errstate(invalid="ignore"):
                model = linear_quantize_weights(model, OptimizationConfig(global_config=config))
        spec = model.get_spec()
        ct.utils.rename_feature(spec, logits_name, "logits")
        model = ct.models.MLModel(spec, weights_dir=model.weights_dir)
        _describe(model, request)
        _save(model, Path(request.out_file))

        notes = {
            "compute_precision": PRECISION[request.quantize],
            "precision": "Core ML computes in float16 by default on device; this package sets compute_precision "
            f"{PRECISION[request.quantize]} explicitly",
            "outputs": "logits (float32, what parity compares), classLabel and classLabel_probs (softmax) for apps",
            "dynamic_batch": False,
            "specification_version": model.get_spec().specificationVersion,
            "prediction": "needs macOS; on other systems parity is not run",
        }
        if request.quantize == "int8-dynamic":
            notes["int8"] = "weight-only int8 (per channel), computed in float32; Core ML has no dynamic activation quantization"
        crop = int(request.preprocess["crop"])
        return ExportResult(
            input={"name": "image", "shape": [1, 3, crop, crop], "dtype": "float32", "layout": "NCHW"},
            output={"name": "logits", "shape": [1, len(request.labels)], "dtype": "float32", "layout": ""},
            toolchain={"coremltools": package_version("coremltools")},
            notes=notes,
        )

    def load(self, path: Path, manifest, threads: int | None = None) -> CoreMLRuntime:
        """`threads` is accepted for a uniform signature; Core ML schedules its own threads."""
        if sys.platform != "darwin":
            raise MissingBackendError(
                f"{Path(path).name} needs macOS to run: Core ML prediction runs only on macOS; the file was converted "
                "and its manifest written, but parity is not run. Run `dermmobile bench` on a Mac to check it"
            )
        return CoreMLRuntime(Path(path), manifest)


def _with_probabilities(model):
    """Return (logits, softmax): the classifier needs probabilities, parity needs logits."""
    import torch

    class WithProbabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image):
            logits = self.inner(image)
            return logits, torch.softmax(logits, dim=1)

    return WithProbabilities(model).eval()


def _describe(model, request: ExportRequest) -> None:
    """What Xcode shows, plus everything an app needs to feed the model (labels travel in the classifier)."""
    model.author = "dermmobile"
    model.license = DISCLAIMER
    model.short_description = f"{request.arch} skin-condition classifier, {len(request.labels)} classes. {DISCLAIMER}"
    model.version = package_version("dermmobile")
    model.input_description["image"] = (
        "float32 1x3xHxW RGB, resized, centre-cropped and normalized with the mean/std in the 'preprocess' metadata"
    )
    model.output_description["logits"] = "float32 class scores before softmax, in label order"
    model.output_description["classLabel"] = "most likely label"
    model.output_description["classLabel_probs"] = "softmax probability per label"
    model.user_defined_metadata.update(
        {
            "dermmobile.arch": request.arch,
            "dermmobile.quantization": request.quantize,
            "dermmobile.labels": json.dumps(list(request.labels)),
            "dermmobile.preprocess": json.dumps(request.preprocess),
        }
    )


def _save(model, out: Path) -> None:
    """coremltools insists on a `.mlpackage` name; the caller's temporary name ends in `.partial`, so save beside and move."""
    with tempfile.TemporaryDirectory(prefix=".coreml-", dir=out.parent) as tmp:
        package = Path(tmp) / "model.mlpackage"
        model.save(str(package))
        os.replace(package, out)


TARGET = CoreMLTarget()
