"""ExecuTorch: torch.export, lowered to the XNNPACK backend, written as a `.pte` program.

fp32, or int8 through PT2E (XNNPACKQuantizer, symmetric per-channel weights, per-tensor
activations calibrated on real images). The program takes one float32 NCHW image at a
time, as a phone app calls it; the Runtime loops over larger batches. I/O stays float32
in both variants: the quantize/dequantize steps sit inside the program.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermmobile.errors import require
from dermmobile.targets.base import ExportRequest, ExportResult, batched, package_version


class ExecuTorchRuntime:
    name = "executorch"

    def __init__(self, path: Path, threads: int | None = None):
        require("executorch", "executorch")
        from executorch.runtime import Runtime

        runtime = Runtime.get()
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
        )

    def load(self, path: Path, manifest, threads: int | None = None) -> ExecuTorchRuntime:
        return ExecuTorchRuntime(Path(path), threads)

    def pt2e_quantizer(self, is_qat: bool = False):
        """XNNPACK's PT2E quantizer as int8 uses it: ReLU6 outputs observed after the clamp (see targets/pt2e.py).

        is_qat: the same annotation with fake-quantize observers, for `dermmobile qat`.
        """
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        from dermmobile.targets.pt2e import clamp_aware

        return clamp_aware(XNNPACKQuantizer)().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat))


def _quantize(model, request: ExportRequest):
    """PT2E int8: calibrated on the request's images, or converted from a QAT checkpoint's trained graph."""
    from dermmobile.targets.pt2e import calibrated_int8, converted_qat

    if request.qat:
        return converted_qat(model, fold_quantize=True)
    quantizer = TARGET.pt2e_quantizer()
    return calibrated_int8(model, request.example_input(), quantizer, request.calibration, fold_quantize=True)


TARGET = ExecuTorchTarget()
