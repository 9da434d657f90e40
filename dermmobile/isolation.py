"""Run one format's conversion in a child process with a time limit.

Converters are large native libraries; one that hangs or segfaults must cost one row
of a sweep, not the whole run. The child is *spawned*, not forked: a fork taken after
torch has started its OpenMP threads deadlocks in the child. The request (model
included) is pickled to it, the child imports the target's module by name, sends back
the ExportResult through a pipe, and is killed at the limit.

A killed child cannot clean up after itself, and converters leave temporary folders
(onnx, litert-torch, coremltools each make their own). So the parent makes one private
temporary folder per conversion, the child points TMPDIR and `tempfile` at it before it
imports anything, and the parent removes it, whatever became of the child.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import traceback

from dermmobile.errors import ExportFailedError


def _child(connection, module: str, request, scratch: str) -> None:
    os.environ.update(TMPDIR=scratch, TEMP=scratch, TMP=scratch)  # native code reads these
    tempfile.tempdir = scratch
    try:
        import importlib

        connection.send(("ok", importlib.import_module(module).TARGET.export(request)))
    except BaseException as exc:  # everything goes back to the parent as text
        connection.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    finally:
        connection.close()


def run_isolated(target_name: str, request, timeout: float):
    from dermmobile.targets import target_module

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    scratch = tempfile.mkdtemp(prefix=f"dermmobile-{target_name}-")
    process = context.Process(target=_child, args=(sender, target_module(target_name), request, scratch), daemon=True)
    try:
        process.start()
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            process.join()
            raise ExportFailedError(
                f"{target_name} {request.quantize}: conversion exceeded --timeout {timeout:g} s and was killed"
            )
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join()
            raise ExportFailedError(
                f"{target_name} {request.quantize}: the converter process died (exit code {process.exitcode}, "
                "a crash such as a segfault); the other targets are unaffected"
            ) from None
        process.join()
        if status == "error":
            raise ExportFailedError(f"{target_name} {request.quantize} export failed in its subprocess: {payload}")
        return payload
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
        shutil.rmtree(scratch, ignore_errors=True)  # what the child's converters left, killed or not
