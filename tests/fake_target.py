"""A Target for tests: writes the model's weights, and its runtime can be told to misbehave."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from dermmobile.targets.base import ExportRequest, ExportResult, TorchRuntime

MODELS: dict[str, object] = {}
# Tests set DERMMOBILE_FAKE_TARGET (JSON) so that spawned export subprocesses misbehave too.
BEHAVIOUR = {"noise": 0.0, "nan_rows": 0, "raise": None, "hang": 0.0, "crash": False} | json.loads(
    os.environ.get("DERMMOBILE_FAKE_TARGET", "{}")
)


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
        Path(request.out_file).write_bytes(pickle.dumps({"key": key}))
        shape = request.input_shape
        return ExportResult(
            input={"name": "image", "shape": shape, "dtype": "float32", "layout": request.layout},
            output={"name": "logits", "shape": [1, len(request.labels)], "dtype": "float32"},
            toolchain={"fake": "1"},
        )

    def load(self, path, manifest, threads=None):
        key = pickle.loads(Path(path).read_bytes())["key"]
        return FakeRuntime(MODELS[key])


class FakeRuntime:
    name = "fake"

    def __init__(self, model):
        self.inner = TorchRuntime(model)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.predict(batch)
        out = out + np.random.default_rng(0).normal(0, BEHAVIOUR["noise"], out.shape).astype(np.float32)
        out[: BEHAVIOUR["nan_rows"]] = np.nan
        return out


class AbortingTarget(FakeTarget):
    """A runtime that aborts the whole process on load, as ExecuTorch's loader did on some damaged files."""

    name = "aborting"
    load_may_crash = True

    def load(self, path, manifest, threads=None):
        os.abort()


TARGET = FakeTarget()
