"""Export a checkpoint to one or more formats, write manifests, and check parity at export time.

The order for each target: refuse impossible combinations before any work, convert to a
temporary name, rename, write the manifest, load the artifact back through its own
runtime and compare it with the PyTorch model on real images. A target that fails
(converter error, timeout, crash) costs its row, not the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermmobile.artifact import Artifact, Manifest, TensorSpec, write_manifest
from dermmobile.errors import BadInputError, DermmobileError, ExportFailedError, GateFailedError, MissingBackendError
from dermmobile.fsutil import atomic_path
from dermmobile.parity import apply_gate, compare_logits
from dermmobile.targets import resolve
from dermmobile.targets.base import ExportRequest, Target, TorchRuntime, batched, package_version


@dataclass
class CheckImages:
    """Real images to check parity on (and their true labels, when known)."""

    arrays: np.ndarray
    names: list[str]
    targets: np.ndarray | None
    source: str


@dataclass
class ExportOutcome:
    target: str
    quantization: str
    artifact: Artifact | None = None
    error: str | None = None
    exit_code: int = 0
    parity: dict | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ExportPlan:
    targets: list[Target]
    quantize: str
    out_dir: Path
    layout: str = "NCHW"
    calibration: np.ndarray | None = None
    calibration_record: dict | None = None
    check: CheckImages | None = None
    timeout: float | None = None
    outcomes: list[ExportOutcome] = field(default_factory=list)


def artifact_name(arch: str, target: Target, quantize: str, layout: str = "NCHW") -> str:
    suffix = "-nhwc" if layout == "NHWC" else ""
    return f"{arch}-{target.name}-{quantize}{suffix}{target.extension}"


def base_toolchain() -> dict:
    return {
        "dermmobile": package_version("dermmobile"),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "numpy": package_version("numpy"),
        "platform": f"{platform.system()} {platform.machine()}",
    }


@contextlib.contextmanager
def _artifact_lock(out_dir: Path, name: str):
    """One writer per artifact name at a time, so an artifact and its manifest always come from the same export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_artifact(checkpoint, target: Target, plan: ExportPlan) -> Artifact:
    """Convert, write the manifest and return the artifact (parity not yet checked)."""
    meta = checkpoint.meta
    final = plan.out_dir / artifact_name(meta.arch, target, plan.quantize, plan.layout)
    request = ExportRequest(
        model=checkpoint.model,
        arch=meta.arch,
        labels=list(meta.labels),
        preprocess=dict(meta.preprocess),
        quantize=plan.quantize,
        layout=plan.layout,
        calibration=plan.calibration,
        calibration_record=plan.calibration_record,
        qat=meta.qat or None,
    )
    started = time.perf_counter()
    with _artifact_lock(plan.out_dir, final.name):
        with atomic_path(final) as tmp:
            request.out_file = tmp
            result = _run_export(target, request, plan.timeout)
        manifest = Manifest(
            format=target.name,
            quantization=plan.quantize,
            file=final.name,
            arch=meta.arch,
            labels=list(meta.labels),
            input=TensorSpec(**result.input),
            output=TensorSpec(**result.output),
            preprocess=dict(meta.preprocess),
            checkpoint_sha256=checkpoint.file_sha256,
            calibration=_calibration(meta, plan),
            toolchain=base_toolchain() | result.toolchain,
            notes=result.notes | _qat_notes(meta),
            export_seconds=round(time.perf_counter() - started, 3),
        )
        write_manifest(final, manifest)
    return Artifact(final, manifest)


def _qat_notes(meta) -> dict:
    if not meta.qat:
        return {}
    from dermmobile.qat import manifest_notes

    return manifest_notes(meta)


def _calibration(meta, plan: ExportPlan) -> dict | None:
    """Where the int8 ranges came from: the calibration images, or a QAT checkpoint's training images."""
    if plan.quantize != "int8":
        return None
    return meta.qat.get("calibration") if meta.qat else plan.calibration_record


def _run_export(target: Target, request: ExportRequest, timeout: float | None):
    if timeout:
        from dermmobile.isolation import run_isolated

        return run_isolated(target.name, request, timeout)
    return target.export(request)


def check_parity(artifact: Artifact, check: CheckImages, reference_logits: np.ndarray) -> dict:
    """Load the artifact through its own runtime, compare with the reference, gate, and record in the manifest."""
    from dermmobile.targets import get_target

    manifest = artifact.manifest
    name = artifact.path.name
    try:
        runtime = get_target(manifest.format).load(artifact.path, manifest)
    except MissingBackendError as exc:
        manifest.parity = {"status": f"not run: {exc}", "images": 0}
        manifest.status = "not-run"
        write_manifest(artifact.path, manifest)
        return manifest.parity
    logits = batched(runtime.predict, check.arrays, 16)
    report = apply_gate(
        compare_logits(reference_logits, logits, manifest.labels, check.names, check.targets), manifest.quantization, name
    )
    manifest.parity = report.to_dict() | {"source": check.source}
    manifest.status = "passed" if report.passed else "failed"
    write_manifest(artifact.path, manifest)
    return manifest.parity


def run_plan(checkpoint, plan: ExportPlan) -> list[ExportOutcome]:
    """Export every target of the plan; one failure is recorded and the rest go on."""
    reference = None
    if plan.check is not None:
        reference = batched(TorchRuntime(checkpoint.model).predict, plan.check.arrays, 16)
    for target in plan.targets:
        outcome = ExportOutcome(target.name, plan.quantize)
        started = time.perf_counter()
        try:
            outcome.artifact = export_artifact(checkpoint, target, plan)
            if plan.check is not None:
                outcome.parity = check_parity(outcome.artifact, plan.check, reference)
                failures = outcome.parity.get("failures") or []
                if failures:
                    raise GateFailedError("; ".join(failures))
        except DermmobileError as exc:
            outcome.error, outcome.exit_code = str(exc), exc.exit_code
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a converter's own exception: record it, keep going
            outcome.error = f"{target.name} {plan.quantize} export failed: {type(exc).__name__}: {exc}"
            outcome.exit_code = ExportFailedError.exit_code
        outcome.seconds = round(time.perf_counter() - started, 2)
        plan.outcomes.append(outcome)
    return plan.outcomes


def plan_export(
    checkpoint,
    targets: str | list[str],
    quantize: str,
    out_dir: Path,
    calib_data: Path | None = None,
    calib_count: int = 64,
    check_data: Path | None = None,
    layout: str = "NCHW",
    timeout: float | None = None,
    seed: int = 0,
) -> ExportPlan:
    """Validate options and load calibration/check images, before any conversion starts."""
    from dermmobile.data import balanced_sample, calibration_record, held_out, load_images, scan_image_folder

    chosen = resolve(targets, quantize)
    if checkpoint.meta.qat:
        from dermmobile.qat import check_export

        check_export(checkpoint.meta, chosen, quantize, calib_data)
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise BadInputError(f"--layout must be nchw or nhwc, got {layout.lower()}")
    meta = checkpoint.meta
    spec = meta.spec
    plan = ExportPlan(chosen, quantize, Path(out_dir), layout, timeout=timeout)
    calib_names: set[str] = set()
    if calib_data is not None:
        folder = scan_image_folder(calib_data, expected_classes=meta.labels)
        taken = balanced_sample(folder.samples, calib_count, seed)
        images = load_images(taken, spec, folder.root, progress="calibration images")
        _report_bad(images.bad)
        if not len(images):
            raise BadInputError(f"none of the {len(taken)} calibration images in {calib_data} could be decoded")
        kept = [s for s in taken if s.path.relative_to(folder.root).as_posix() in set(images.names)]
        plan.calibration = images.arrays
        plan.calibration_record = calibration_record(kept, folder.classes, folder.root, seed).as_dict()
        calib_names = set(images.names)
    elif quantize == "int8" and not meta.qat:
        raise BadInputError(
            "--quantize int8 quantizes activations and needs real calibration images: pass --calib-data DIR "
            "(an ImageFolder with the checkpoint's classes); dermmobile never calibrates on random data"
        )
    check_root = check_data or calib_data or _training_root(meta)
    if check_root is not None:
        folder = scan_image_folder(check_root, expected_classes=meta.labels)
        # Calibration images are the checkpoint's training images (or another folder): the parity
        # set is then the rest of that folder, else the checkpoint's held-out images.
        samples = folder.samples if calib_data is not None and check_data is None else held_out(folder, meta.data).samples
        # Images used for calibration are not used to judge the calibrated artifact.
        samples = [s for s in samples if s.path.relative_to(folder.root).as_posix() not in calib_names]
        images = load_images(samples, spec, folder.root, progress="parity images")
        _report_bad(images.bad)
        if len(images):
            plan.check = CheckImages(images.arrays, images.names, images.targets, str(check_root))
    return plan


def _training_root(meta) -> Path | None:
    root = (meta.data or {}).get("root")
    return Path(root) if root and Path(root).is_dir() else None


def _report_bad(bad: list[tuple[str, str]]) -> None:
    import sys

    for name, reason in bad:
        print(f"skipped {name}: {reason}", file=sys.stderr)
