"""Opening a .pte imports ExecuTorch's runtime without its exporter, and the exporter still imports whole afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("executorch")

CHECK_EXPORTER_AFTER = """
import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower  # the exporter, after the runtime
import executorch.exir._warnings as warnings_module
assert issubclass(warnings_module.ExperimentalWarning, DeprecationWarning)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
program = torch.export.export(model, (torch.ones(1, 3, 8, 8),))
buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
method = api.Runtime.get().load_program(buffer).load_method("forward")
out = method.execute([torch.ones(1, 3, 8, 8)])[0]
assert torch.allclose(out, model(torch.ones(1, 3, 8, 8)), atol=1e-5)  # exported and run in this one process
"""


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_runtime_imports_without_the_exporter():
    _run(
        """
import sys
from dermmobile.targets.executorch import runtime_api
api = runtime_api()
assert api.Runtime.get() is not None
exir = sorted(name for name in sys.modules if name.startswith("executorch.exir"))
assert exir == ["executorch.exir._warnings"] and "torch._dynamo" not in sys.modules, exir
"""
        + CHECK_EXPORTER_AFTER
    )


def test_a_runtime_import_that_fails_that_way_is_done_the_usual_way():
    """Should a later ExecuTorch need more of exir than its warnings, the import is undone and run normally."""
    _run(
        """
import importlib, sys
real = importlib.import_module
calls = []
def fails_once(name, package=None):
    calls.append(name)
    if name == "executorch.runtime" and calls.count(name) == 1:
        import executorch.exir.dialects  # more of exir than the bare package holds
    return real(name, package)
importlib.import_module = fails_once
from dermmobile.targets.executorch import runtime_api
api = runtime_api()
assert calls.count("executorch.runtime") == 2 and api.Runtime.get() is not None
assert hasattr(sys.modules["executorch.exir"], "to_edge_transform_and_lower")  # the real package, init run
"""
        + CHECK_EXPORTER_AFTER
    )
