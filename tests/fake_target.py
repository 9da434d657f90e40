"""A Target for tests: writes the model's weights, and its runtime can be told to misbehave.

int8 artifacts carry known per-layer sensitivities: each quantized layer adds
`layer_noise[layer]` times a fixed, image-dependent direction to the logits; layers left
in float add nothing. `simulation` predicts exactly that, plus `simulation_bias` (a
simulation that is too optimistic makes the fallback build more real artifacts).
`float_ops` makes the file claim more float ops than the fallback asked for (silently float).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from dermmobile.targets.base import ExportRequest, ExportResult, OpCounts, TorchRuntime

MODELS: dict[str, object] = {}
# Tests set DERMMOBILE_FAKE_TARGET (JSON) so that spawned export subprocesses misbehave too.
DEFAULT_BEHAVIOUR = {"noise": 0.0, "nan_rows": 0, "raise": None, "hang": 0.0, "crash": False, "layer_noise": {},
                     "simulation_bias": 1.0, "float_ops": 0}  # fmt: skip
BEHAVIOUR = DEFAULT_BEHAVIOUR | json.loads(os.environ.get("DERMMOBILE_FAKE_TARGET", "{}"))


class FakeTarget:
    name = "fake"
    extension = ".fake"
    quantizations = frozenset({"none", "int8"})
    extra = ""

    def export(self, request: ExportRequest) -> ExportResult:
        if BEHAVIOUR["raise"]:
            raise RuntimeError(BEHAVIOUR["raise"])
        if BEHAVIOUR.get("tempdir"):  # a converter's own temporary folder, recorded for the test
            import tempfile

            Path(BEHAVIOUR["tempdir"]).write_text(tempfile.mkdtemp(prefix="fake-converter-"))
        if BEHAVIOUR["hang"]:
            import time

            time.sleep(BEHAVIOUR["hang"])
        if BEHAVIOUR["crash"]:
            import faulthandler
            import signal

            faulthandler.disable()  # pytest's handler would print the child's stack; the crash is the point
            os.kill(os.getpid(), signal.SIGSEGV)
        key = str(len(MODELS))
        MODELS[key] = request.model
        quantized = _quantized_layers(request) if request.quantize == "int8" else []
        Path(request.out_file).write_bytes(pickle.dumps({"key": key, "quantized": quantized}))
        shape = request.input_shape
        counts = None
        if request.quantize == "int8":
            counts = OpCounts(
                int8=len(quantized) - BEHAVIOUR["float_ops"], float=len(request.float_layers) + BEHAVIOUR["float_ops"]
            )
        return ExportResult(
            input={"name": "image", "shape": shape, "dtype": "float32", "layout": request.layout},
            output={"name": "logits", "shape": [1, len(request.labels)], "dtype": "float32"},
            toolchain={"fake": "1"},
            op_counts=counts,
        )

    def load(self, path, manifest, threads=None):
        record = pickle.loads(Path(path).read_bytes())
        return FakeRuntime(MODELS[record["key"]], record["quantized"])

    def simulation(self, request: ExportRequest):
        runtime = FakeRuntime(request.model, [])
        names = _quantized_layers(request)

        def simulate(images: np.ndarray, float_layers: frozenset[str]) -> np.ndarray:
            quantized = [name for name in names if name not in float_layers]
            clean = runtime.inner.predict(images)
            return clean + BEHAVIOUR["simulation_bias"] * layer_noise(images, quantized, clean.shape[1])

        return simulate


def _quantized_layers(request: ExportRequest) -> list[str]:
    import torch

    from dermmobile.quantization.simulate import model_layers

    example = torch.from_numpy(np.ascontiguousarray(request.calibration[:1]))
    return [layer.name for layer in model_layers(request.model, example) if layer.name not in request.float_layers]


def layer_noise(images: np.ndarray, quantized: list[str], classes: int) -> np.ndarray:
    """Each quantized layer's error: its sensitivity times a fixed direction that depends on the image."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    total = np.zeros((len(images), classes))
    for name in quantized:
        scale = BEHAVIOUR["layer_noise"].get(name, 0.0)
        if scale:
            seed = int.from_bytes(name.encode(), "little") % (2**32)
            projection = np.random.default_rng(seed).normal(size=(flat.shape[1], classes)) / np.sqrt(flat.shape[1])
            total += scale * np.tanh(flat @ projection)
    return total.astype(np.float32)


class FakeRuntime:
    name = "fake"

    def __init__(self, model, quantized: list[str]):
        self.inner = TorchRuntime(model)
        self.quantized = quantized

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.predict(batch)
        out = out + np.random.default_rng(0).normal(0, BEHAVIOUR["noise"], out.shape).astype(np.float32)
        out = out + layer_noise(batch, self.quantized, out.shape[1])
        out[: BEHAVIOUR["nan_rows"]] = np.nan
        return out


class AbortingTarget(FakeTarget):
    """A runtime that aborts the whole process on load, as ExecuTorch's loader did on some damaged files."""

    name = "aborting"
    load_may_crash = True

    def load(self, path, manifest, threads=None):
        os.abort()


TARGET = FakeTarget()
