"""Opening an artifact for inference: the one way every command runs an exported file.

`open_runtime(artifact, threads)` loads a verified artifact through its own target and
runs one inference on a blank image before anyone relies on it. Every command that runs
artifacts (inspect, predict, bench, android, web) goes through it, so a damaged file
(truncated, bit-flipped, an ONNX op from an unknown domain, a manifest that belongs to
another model) gives the same exit 2 and message everywhere:

    <file>: the artifact is damaged or not supported by this runtime: <the runtime's reason>

The sha256 check in `load_artifact` catches a file edited after export; this catches a
damaged file whose manifest was rewritten to match, and a manifest whose labels or input
shape do not fit the file. Runtimes are native code: some abort the whole process on a
malformed file instead of raising (ExecuTorch's XNNPACK loader was seen to). Targets that
set `load_may_crash = True` are therefore first opened in a child process, which may die
or hang without taking the command with it.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError, DermmobileError, MissingBackendError, UnsafeFileError

PROBE_TIMEOUT_S = 300  # a first load of a large model on a slow machine stays well under this
DAMAGED = "the artifact is damaged or not supported by this runtime"


def damaged(path: Path, reason: str) -> BadInputError:
    return BadInputError(f"{path}: {DAMAGED}: {' '.join(str(reason).split())[:400]}")


def load_runtime(artifact, threads: int | None = None):
    """Load through the artifact's target without the test inference (the bench times this); errors as `open_runtime`."""
    from dermmobile.targets import get_target

    target = get_target(artifact.manifest.format)
    accepts_threads = "threads" in inspect.signature(target.load).parameters
    try:
        return target.load(artifact.path, artifact.manifest, **({"threads": threads} if accepts_threads else {}))
    except (MissingBackendError, UnsafeFileError):  # exit 4: runtime missing; a refusal with its own reason
        raise
    except BadInputError as exc:  # the target's own check (not an ONNX model, a manifest that does not fit it)
        raise damaged(artifact.path, str(exc).removeprefix(f"{artifact.path}: ")) from None
    except Exception as exc:
        raise damaged(artifact.path, f"{type(exc).__name__}: {exc}") from None


def smoke_test(runtime, artifact) -> None:
    """One inference on a blank image of the manifest's size: it must run and give one logit per label."""
    from dermmobile.preprocess import PreprocessSpec

    manifest = artifact.manifest
    crop = PreprocessSpec.from_dict(manifest.preprocess).crop
    try:
        logits = np.asarray(runtime.predict(np.zeros((1, 3, crop, crop), np.float32)))
    except DermmobileError:
        raise
    except Exception as exc:
        raise damaged(artifact.path, f"{type(exc).__name__}: {exc}") from None
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise damaged(artifact.path, f"one image gave outputs of shape {list(logits.shape)}, not [1, classes]")
    if logits.shape[1] != len(manifest.labels):
        raise BadInputError(
            f"{artifact.path}: the manifest lists {len(manifest.labels)} labels but the artifact gives {logits.shape[1]} "
            "outputs per image; the manifest does not belong to this file. Re-export it"
        )


def open_runtime(artifact, threads: int | None = None):
    """A Runtime for a verified artifact (see `dermmobile.artifact.load_artifact`), proven to run.

    Raises BadInputError (exit 2) when the file is damaged or does not fit its manifest, and
    MissingBackendError (exit 4) when its runtime is not installed or cannot run here.
    """
    probe_if_risky(artifact, threads)
    runtime = load_runtime(artifact, threads)
    smoke_test(runtime, artifact)
    return runtime


def probe_if_risky(artifact, threads: int | None = None) -> None:
    """For targets whose runtime may abort the process on a malformed file: load and test it in a child
    process first, where a native crash or a hang becomes a refusal here."""
    from dermmobile.targets import get_target

    if not getattr(get_target(artifact.manifest.format), "load_may_crash", False):
        return
    command = [sys.executable, "-m", "dermmobile.runtime", str(artifact.manifest_file), str(threads or 1)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise damaged(artifact.path, f"loading it did not finish within {PROBE_TIMEOUT_S} s") from None
    verdict = _verdict(done.stdout)
    if done.returncode == 0 and verdict:
        if verdict["status"] == "ok":
            return
        error = {"missing": MissingBackendError, "refused": BadInputError}.get(verdict["status"], BadInputError)
        raise error(verdict["message"])
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else -done.returncode
        last = " ".join((done.stderr or "").strip().splitlines()[-2:])[-300:]
        raise damaged(artifact.path, f"the runtime crashed ({name}) while loading it" + (f": {last}" if last else ""))
    raise damaged(artifact.path, f"the loading process failed (exit {done.returncode}): {(done.stderr or '')[-300:]}")


def _verdict(stdout: str) -> dict | None:
    """The child's last stdout line is its JSON verdict (runtimes may print before it)."""
    lines = (stdout or "").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) and "status" in verdict else None


def _child(manifest_file: str, threads: int) -> dict:
    from dermmobile.artifact import load_artifact

    try:
        artifact = load_artifact(Path(manifest_file))
        smoke_test(load_runtime(artifact, threads), artifact)
    except MissingBackendError as exc:
        return {"status": "missing", "message": str(exc)}
    except DermmobileError as exc:
        return {"status": "refused", "message": str(exc)}
    return {"status": "ok"}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))), flush=True)
