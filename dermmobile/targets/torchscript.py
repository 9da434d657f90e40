"""TorchScript for PyTorch Mobile: a traced model saved for the lite interpreter (`.ptl`).

Only fp32. int8 would need torch.ao.quantization's eager/FX flow, which PyTorch has
deprecated in favour of torchao's PT2E, and PT2E graphs cannot be traced back into
TorchScript kernels; the ExecuTorch target is the int8 route for PyTorch on phones.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dermmobile.targets.base import ExportRequest, ExportResult, package_version

DEPRECATION = "PyTorch deprecates torch.jit.trace and the lite interpreter in favour of torch.export and ExecuTorch"


class TorchScriptRuntime:
    name = "torchscript"

    def __init__(self, path: Path, threads: int | None = None):
        import torch  # a base dependency: no extra to name
        from torch.jit.mobile import _load_for_lite_interpreter

        if threads:
            torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # the deprecation, noted at export
            self.module = _load_for_lite_interpreter(str(path))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()


class TorchScriptTarget:
    name = "torchscript"
    extension = ".ptl"
    quantizations = frozenset({"none"})
    extra = ""  # torch is a base dependency

    def export(self, request: ExportRequest) -> ExportResult:
        import torch  # a base dependency: no extra to name
        from torch.utils.mobile_optimizer import optimize_for_mobile

        request.check(self.name)
        example = request.example_input()
        notes = {"dynamic_batch": True, "deprecated": DEPRECATION, "optimize_for_mobile": "ran"}
        # The deprecation is recorded once in the notes instead of three FutureWarnings per export.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning)
            # Tracing a second batch size makes the tracer prove the graph does not bake in N = 1.
            traced = torch.jit.trace(request.model.eval(), example, check_inputs=[(torch.cat([example, example]),)])
            try:
                traced = optimize_for_mobile(traced)
            except RuntimeError as exc:
                # Builds without XNNPACK refuse; the unoptimized graph gives the same answers, only slower.
                message = str(exc)
                reason = "this torch build has no XNNPACK" if "XNNPACK is not enabled" in message else message.splitlines()[0]
                notes["optimize_for_mobile"] = f"skipped: {reason[:300]}"
            traced._save_for_lite_interpreter(str(request.out_file))
        return ExportResult(
            input={"name": "image", "shape": request.input_shape, "dtype": "float32", "layout": "NCHW"},
            output={"name": "logits", "shape": [1, len(request.labels)], "dtype": "float32", "layout": ""},
            toolchain={"torch": package_version("torch")},
            notes=notes,
        )

    def load(self, path: Path, manifest, threads: int | None = None) -> TorchScriptRuntime:
        return TorchScriptRuntime(Path(path), threads)


TARGET = TorchScriptTarget()
