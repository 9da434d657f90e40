"""What every export format provides: a Target that writes and reads its own files.

A Target exports a PyTorch model to one file (or Core ML package folder) and loads that
file back as a Runtime. Runtimes all speak the same language: float32 NCHW normalized
images in, float32 logits out; layout changes and int8 (de)quantization live inside
them, so parity and latency code never knows about formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

QUANTIZATIONS = ("none", "fp16", "int8-dynamic", "int8")


@dataclass
class ExportRequest:
    """Everything a Target needs to write one artifact."""

    model: object  # torch.nn.Module, eval mode, on CPU
    arch: str
    labels: list[str]
    preprocess: dict  # PreprocessSpec.to_dict()
    quantize: str = "none"
    layout: str = "NCHW"  # the artifact's image input layout
    calibration: np.ndarray | None = None  # float32 NCHW normalized real images (int8 needs them)
    calibration_record: dict | None = None
    out_file: Path | None = None  # where the Target writes (a temporary name; renamed on success)
    float_layers: frozenset[str] = frozenset()  # int8: module names left in float (accuracy-aware fallback)
    observer: str = ""  # int8: activation calibration method; "" = the target's measured default
    # A QAT checkpoint's record (CheckpointMeta.qat): `model` is then its fake-quantize model, and
    # int8 converts that trained graph instead of calibrating (see dermmobile/qat.py).
    qat: dict | None = None
    # int8 simulation only: the model before int8 weight rounding (batch norm folded like `model`), whose weights a
    # layer left float keeps (quantization/simulate.Simulation); None when `model`'s weights are not rounded.
    float_model: object = None

    @property
    def input_shape(self) -> list[int]:
        crop = int(self.preprocess["crop"])
        return [1, 3, crop, crop] if self.layout == "NCHW" else [1, crop, crop, 3]

    def check(self, target: str, layouts: tuple[str, ...] = ("NCHW",)) -> None:
        """Refuse a layout the target cannot take, or int8 without real calibration images."""
        from dermmobile.errors import BadInputError

        if self.layout not in layouts:
            raise BadInputError(f"{target} takes --layout {' or '.join(layouts)}, got {self.layout!r}")
        if self.quantize == "int8" and not self.qat and (self.calibration is None or not len(self.calibration)):
            raise BadInputError(
                f"{target} int8 calibrates activation ranges on real images: --calib-data FOLDER is needed "
                "(an ImageFolder of training images); --quantize int8-dynamic needs none"
            )

    def example_input(self):
        import torch

        crop = int(self.preprocess["crop"])
        if self.calibration is not None and len(self.calibration):
            return torch.from_numpy(np.ascontiguousarray(self.calibration[:1]))
        return torch.zeros(1, 3, crop, crop)


@dataclass
class OpCounts:
    """The compute ops (convolution, fully connected, matmul) of an artifact file, by what they compute in.

    int8: int8 weights and int8 activations. dynamic: int8 weights, activations float at the
    op's boundary (quantized on the fly by the kernel, or the weights dequantized). float:
    float weights and activations. Counted from the file the runtime loads, so an "int8"
    artifact that came out float is caught.
    """

    int8: int = 0
    dynamic: int = 0
    float: int = 0
    by_op: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, op: str, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        counts = self.by_op.setdefault(op, {})
        counts[kind] = counts.get(kind, 0) + 1

    def to_dict(self) -> dict:
        return {"int8": self.int8, "dynamic": self.dynamic, "float": self.float, "by_op": self.by_op}


@dataclass
class ExportResult:
    """What a Target reports about the file it wrote (the rest of the manifest is generic)."""

    input: dict  # TensorSpec fields
    output: dict
    toolchain: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    op_counts: OpCounts | None = None  # compute ops by precision, counted in the written file


class Runtime(Protocol):
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW normalized images -> float32 logits (N x classes)."""
        ...


# The symmetric per-channel int8 weight grid of PT2E's quantizers (litert, XNNPACK) and of onnxruntime's full range.
FULL_WEIGHT_RANGE = (-127, 127)


class Target(Protocol):
    name: str
    extension: str
    quantizations: frozenset[str]
    extra: str  # pip extra that installs its converter/runtime
    # Optional `load_may_crash: bool`: its runtime may abort the process on a malformed file
    # (dermmobile.runtime then opens files in a child process first).

    def export(self, request: ExportRequest) -> ExportResult: ...

    def load(self, path: Path, manifest, threads: int | None = None) -> Runtime:
        """Open the file with its runtime; raises MissingBackendError where it cannot run (Core ML off macOS)."""
        ...

    # Optional: `weight_range(layer=None) -> (qmin, qmax)`, the symmetric per-channel int8 weight grid its int8 gives
    # `layer` (a torch conv or linear module; None: an ordinary one). GPTQ and bias correction round to it
    # (dermmobile/quantization/); without it neither runs.
    # Optional: targets whose int8 is PT2E also name `pt2e_toolchain` ("litert", "xnnpack"), the key of
    # targets/pt2e.build_quantizer their int8 uses; `dermmobile qat` trains with its qat form (dermmobile/qat.py).


class TorchRuntime:
    """The eager PyTorch model as a Runtime: the fp32 reference every artifact is checked against."""

    name = "pytorch"

    def __init__(self, model, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()


def batched(runtime_fn, batch: np.ndarray, max_batch: int) -> np.ndarray:
    """Run a fixed-batch runtime over any number of images, `max_batch` at a time."""
    outputs = [runtime_fn(batch[i : i + max_batch]) for i in range(0, len(batch), max_batch)]
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0), np.float32)


def to_layout(batch: np.ndarray, layout: str, out: np.ndarray | None = None) -> np.ndarray:
    """NCHW float32 -> the artifact's layout (NCHW: `batch` itself; NHWC: a copy, into `out` when given).

    The NHWC copy goes channel by channel: numpy's general transposed copy of a 224 x 224 x 3
    image took 190 us, three strided channel copies 56 us (measured), a cost paid per image.
    """
    if layout != "NHWC":
        return batch
    if out is None:
        out = np.empty((batch.shape[0], *batch.shape[2:], batch.shape[1]), batch.dtype)
    for channel in range(batch.shape[1]):
        out[..., channel] = batch[:, channel]
    return out


def quantize(batch: np.ndarray, dtype, scale: float, zero_point: int, out=None, work=None) -> np.ndarray:
    """float32 -> int8 or uint8: float32 division, round half to even, clip (the apps do exactly this).

    `work` (float32) and `out` (`dtype`), shaped like `batch`, are written in place when given:
    a runtime called image after image then allocates nothing (a fresh 600 KB array per step
    costs page faults each time). The same steps either way, so the same numbers.
    """
    limits = np.iinfo(dtype)
    work = np.divide(batch, scale, out=work)
    np.rint(work, out=work)
    np.add(work, zero_point, out=work)
    np.clip(work, limits.min, limits.max, out=work)
    if out is None:
        return work.astype(dtype)
    np.copyto(out, work, casting="unsafe")
    return out


def quantize_int8(batch: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return quantize(batch, np.int8, scale, zero_point)


def dequantize(values: np.ndarray, scale: float | None, zero_point: int | None) -> np.ndarray:
    if scale is None:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - float(zero_point or 0)) * float(scale)).astype(np.float32)


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
