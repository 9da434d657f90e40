"""Export a checkpoint to one or more formats, write manifests, and check parity at export time.

The order for each target: refuse impossible combinations before any work, convert to a
temporary name, rename, write the manifest, load the artifact back through its own
runtime and compare it with the PyTorch model on real images. A target that fails
(converter error, timeout, crash) costs its row, not the others.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermmobile.artifact import Artifact, Manifest, TensorSpec, artifact_digest, write_manifest
from dermmobile.chatter import to_log
from dermmobile.errors import BadInputError, DermmobileError, ExportFailedError, GateFailedError, MissingBackendError
from dermmobile.fsutil import atomic_path, exclusive_lock
from dermmobile.parity import apply_gate, compare_logits
from dermmobile.quantization.options import WEIGHT_ROUNDINGS, Int8Options
from dermmobile.targets import resolve
from dermmobile.targets.base import ExportRequest, Target, TorchRuntime, batched, package_version


@dataclass
class CheckImages:
    """Real images to check parity on (and their true labels, when known)."""

    arrays: np.ndarray
    names: list[str]
    targets: np.ndarray | None
    source: str
    unseen: np.ndarray | None = None  # bool per image: never used in training (reported apart: harder near-ties)


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
    check: CheckImages | None = None  # the gate images
    timeout: float | None = None
    outcomes: list[ExportOutcome] = field(default_factory=list)
    tuning: CheckImages | None = None  # int8: the images the fallback chooses on
    int8: Int8Options = field(default_factory=Int8Options)
    image_records: dict = field(default_factory=dict)  # int8: calibration/tuning/gate records for the manifest
    variant: str = ""  # appended to artifact names, so two variants of one export can sit side by side
    # int8: GPTQ's per-layer input statistics on `calibration` (gptq.round_weights), gathered once for every
    # target and fallback attempt of this plan
    layer_statistics: dict = field(default_factory=dict)
    # int8: which calibration images training never fitted (tuning's are in `tuning.unseen`): the forecast's weights
    calibration_unseen: np.ndarray | None = None


def artifact_name(arch: str, target: Target, quantize: str, layout: str = "NCHW", variant: str = "") -> str:
    suffix = ("-nhwc" if layout == "NHWC" else "") + (f"-{variant}" if variant else "")
    return f"{arch}-{target.name}-{quantize}{suffix}{target.extension}"


def converter_log(out_dir: Path) -> Path:
    """Where the converters' and runtimes' own output goes (dermmobile/chatter.py): one file per output folder."""
    return Path(out_dir) / "converters.log"


def base_toolchain() -> dict:
    return {
        "dermmobile": package_version("dermmobile"),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "numpy": package_version("numpy"),
        "platform": f"{platform.system()} {platform.machine()}",
    }


def prepare_int8_weights(model, plan: ExportPlan, weight_range, float_layers: frozenset[str]):
    """The float model the toolchain quantizes: batch norm folded, weights rounded by GPTQ on the toolchain's grid
    (Int8Options.weight_rounding) and/or biases corrected for the rounding (Int8Options.bias_correction).
    `weight_range`: the target's, a grid per layer (or one for all, bias_correction.WeightRange)."""
    int8 = plan.int8
    if int8.weight_rounding == "gptq":
        from dermmobile.quantization.gptq import round_weights

        return round_weights(model, plan.calibration, weight_range, float_layers, correct_mean=int8.bias_correction,
                             statistics=plan.layer_statistics)[0]  # fmt: skip
    if int8.bias_correction:
        from dermmobile.quantization.bias_correction import correct_biases

        return correct_biases(model, plan.calibration, weight_range, float_layers)
    return model


def export_request(checkpoint, target: Target, plan: ExportPlan, float_layers=frozenset()) -> ExportRequest:
    meta = checkpoint.meta
    model = checkpoint.model
    weight_range = getattr(target, "weight_range", None)
    if plan.quantize == "int8" and plan.calibration is not None and weight_range is not None:
        model = prepare_int8_weights(model, plan, weight_range, frozenset(float_layers))
    return ExportRequest(
        model=model,
        arch=meta.arch,
        labels=list(meta.labels),
        preprocess=dict(meta.preprocess),
        quantize=plan.quantize,
        layout=plan.layout,
        calibration=plan.calibration,
        calibration_record=plan.calibration_record,
        float_layers=frozenset(float_layers),
        observer=plan.int8.observer,
        qat=meta.qat or None,
    )


def export_artifact(checkpoint, target: Target, plan: ExportPlan, float_layers=frozenset()) -> Artifact:
    """Convert, write the manifest and return the artifact (parity not yet checked)."""
    meta = checkpoint.meta
    final = plan.out_dir / artifact_name(meta.arch, target, plan.quantize, plan.layout, plan.variant)
    request = export_request(checkpoint, target, plan, float_layers)
    started = time.perf_counter()
    with atomic_path(final) as tmp:
        request.out_file = tmp
        result = _run_export(target, request, plan.timeout)
        written = artifact_digest(tmp)  # what this run made; the manifest must describe exactly this
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
        notes=result.notes,
        export_seconds=round(time.perf_counter() - started, 3),
        op_counts=result.op_counts.to_dict() if result.op_counts else None,
    )
    if plan.quantize == "int8":
        if meta.qat:
            from dermmobile.qat import manifest_record, recorded_float_macs_share

            manifest.qat = manifest_record(meta, plan.int8)
            manifest.float_macs_share = recorded_float_macs_share(meta)
        manifest.tuning_images = plan.image_records.get("tuning")
        manifest.gate_images = plan.image_records.get("gate")
        manifest.float_layers = sorted(request.float_layers)
    write_manifest(final, manifest, expected_sha256=written)
    return Artifact(final, manifest)


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


def check_parity(
    artifact: Artifact, check: CheckImages, reference_logits: np.ndarray, reference_sha256: str | None = None
) -> dict:
    """Load the artifact through its own runtime, compare with the reference, gate, and record in the manifest.

    The record names the file and the checkpoint it was measured with (`artifact_sha256`,
    `checkpoint_sha256`); `load_artifact` refuses a manifest whose parity came from another run.
    `reference_sha256`: the checkpoint file whose model gave `reference_logits` (default: the manifest's).
    """
    from dermmobile.runtime import open_runtime

    manifest = artifact.manifest
    name = artifact.path.name
    binding = {
        "artifact_sha256": artifact_digest(artifact.path),
        "checkpoint_sha256": reference_sha256 or manifest.checkpoint_sha256,
    }
    try:
        runtime = open_runtime(artifact)
    except MissingBackendError as exc:
        manifest.parity = {"status": f"not run: {exc}", "images": 0} | binding
        manifest.status = "not-run"
        write_manifest(artifact.path, manifest, expected_sha256=binding["artifact_sha256"])
        return manifest.parity
    except BadInputError as exc:  # the converter wrote a file its own runtime cannot run
        raise ExportFailedError(f"the exported file does not run: {exc}") from None
    logits = batched(runtime.predict, check.arrays, 16)
    report = apply_gate(
        compare_logits(reference_logits, logits, manifest.labels, check.names, check.targets), manifest.quantization, name
    )
    report.failures += int8_op_failures(manifest, name)
    manifest.parity = report.to_dict() | {"source": check.source} | binding
    if check.unseen is not None and check.unseen.any():
        # Never-trained-on images have about twice the near-ties of training images: their number is the harder one.
        unseen = compare_logits(reference_logits[check.unseen], logits[check.unseen], manifest.labels, None,
                                None if check.targets is None else check.targets[check.unseen])  # fmt: skip
        manifest.parity["unseen_by_training"] = {
            "images": unseen.images, "agreement": unseen.agreement, "flips": len(unseen.flips),
            "accuracy": unseen.accuracy, "reference_accuracy": unseen.reference_accuracy,
        }  # fmt: skip
    manifest.status = "passed" if report.passed else "failed"
    write_manifest(artifact.path, manifest, expected_sha256=binding["artifact_sha256"])
    return manifest.parity


def int8_op_failures(manifest: Manifest, name: str) -> list[str]:
    """An "int8" artifact must compute in int8: every compute op is int8 except the layers deliberately left float."""
    if manifest.quantization != "int8":
        return []
    counts = manifest.op_counts
    if counts is None:
        return [f"{name}: the {manifest.format} target did not count the file's ops, so int8 cannot be verified"]
    allowed = len(manifest.float_layers or [])
    if counts.get("int8", 0) == 0 or counts.get("float", 0) + counts.get("dynamic", 0) > allowed:
        return [
            f"{name}: the file computes {counts.get('int8', 0)} ops in int8 and {counts.get('float', 0)} float / "
            f"{counts.get('dynamic', 0)} dynamic, but only {allowed} layers were left in float on purpose: "
            "it is not the int8 artifact that was asked for"
        ]
    return []


def run_plan(checkpoint, plan: ExportPlan) -> list[ExportOutcome]:
    """Export every target of the plan; one failure is recorded and the rest go on."""
    reference = None
    if plan.check is not None:
        reference = batched(TorchRuntime(checkpoint.model).predict, plan.check.arrays, 16)
    for target in plan.targets:
        outcome = ExportOutcome(target.name, plan.quantize)
        started = time.perf_counter()
        try:
            # One writer per artifact name from conversion through parity: the file, its manifest and
            # the parity recorded in it always come from the same run (issue 15, class 6).
            name = artifact_name(checkpoint.meta.arch, target, plan.quantize, plan.layout, plan.variant)
            with exclusive_lock(plan.out_dir, name), to_log(converter_log(plan.out_dir)):
                if plan.quantize == "int8" and plan.tuning is not None:
                    from dermmobile.quantization.export import export_int8

                    outcome.artifact = export_int8(checkpoint, target, plan)
                else:  # no tuning images: no search, but the int8 logits layer stays float all the same
                    from dermmobile.quantization.export import always_float

                    outcome.artifact = export_artifact(checkpoint, target, plan, always_float(checkpoint, plan))
                if plan.check is not None:
                    outcome.parity = check_parity(outcome.artifact, plan.check, reference, checkpoint.file_sha256)
            failures = (outcome.parity or {}).get("failures") or []
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
    calib_count: int = 128,
    check_data: Path | None = None,
    layout: str = "NCHW",
    timeout: float | None = None,
    seed: int = 0,
    int8: Int8Options | None = None,
) -> ExportPlan:
    """Validate options and load calibration/tuning/check images, before any conversion starts."""
    from dermmobile.data import held_out, scan_image_folder

    chosen = resolve(targets, quantize)
    meta = checkpoint.meta
    if meta.qat:  # int8 from the ranges QAT learned: no calibration, no bias correction, no fallback (qat.py)
        from dermmobile.qat import check_export, export_options

        check_export(meta, chosen, quantize, calib_data, int8 or Int8Options())
        int8 = export_options()
    if int8 is not None and int8.weight_rounding not in WEIGHT_ROUNDINGS:
        raise BadInputError(f"weight rounding {int8.weight_rounding!r} is not known; choose one of {', '.join(WEIGHT_ROUNDINGS)}")
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise BadInputError(f"--layout must be nchw or nhwc, got {layout.lower()}")
    plan = ExportPlan(chosen, quantize, Path(out_dir), layout, timeout=timeout, int8=int8 or Int8Options())
    if meta.qat:
        _load_qat_gate(plan, meta, check_data, seed)
        return plan
    if quantize == "int8":
        if calib_data is None:
            raise BadInputError(
                "--quantize int8 quantizes activations and needs real calibration images: pass --calib-data DIR "
                "(an ImageFolder with the checkpoint's classes); dermmobile never calibrates on random data"
            )
        _load_int8_images(plan, meta, calib_data, calib_count, check_data, seed)
        return plan
    check_root = check_data or calib_data or _training_root(meta)
    if check_root is not None:
        folder = scan_image_folder(check_root, expected_classes=meta.labels)
        plan.check = _load_set(held_out(folder, meta.data).samples, meta.spec, folder.root, "parity images")
    return plan


def _load_int8_images(plan: ExportPlan, meta, calib_data: Path, calib_count: int, check_data: Path | None, seed: int):
    """Calibration, tuning and gate images (data.int8_splits): disjoint, recorded in every int8 manifest."""
    from dermmobile.data import int8_splits, scan_image_folder

    folder = scan_image_folder(calib_data, expected_classes=meta.labels)
    check = scan_image_folder(check_data, expected_classes=meta.labels) if check_data is not None else None
    splits = int8_splits(folder, meta.data, calib_count, plan.int8.tune_count, seed, check)
    calibration = _load_set(splits.calibration, meta.spec, folder.root, "calibration images")
    if calibration is None:
        raise BadInputError(f"none of the {len(splits.calibration)} calibration images in {calib_data} could be decoded")
    plan.calibration = calibration.arrays
    plan.calibration_unseen = np.array([name in splits.unseen_chosen for name in calibration.names], dtype=bool)
    plan.tuning = _load_set(splits.tuning, meta.spec, folder.root, "tuning images")
    if plan.tuning is not None:
        plan.tuning.unseen = np.array([name in splits.unseen_chosen for name in plan.tuning.names], dtype=bool)
    plan.check = _load_set(splits.gate, meta.spec, splits.gate_root, "gate images")
    if plan.check is not None:
        plan.check.unseen = np.array([name in splits.unseen_gate for name in plan.check.names], dtype=bool)
    plan.image_records = splits.records(seed)
    plan.calibration_record = plan.image_records["calibration"] | {
        "observer": plan.int8.observer or "target default",
        "bias_correction": plan.int8.bias_correction,
        "weight_rounding": plan.int8.weight_rounding,
    }


def _load_qat_gate(plan: ExportPlan, meta, check_data: Path | None, seed: int) -> None:
    """A QAT checkpoint's gate: the held-out images of --check-data or of its training folder (QAT trained on neither)."""
    from dermmobile.data import calibration_record, held_out, scan_image_folder

    root = check_data or _training_root(meta)
    if root is None:
        raise BadInputError(
            f"the folder this QAT checkpoint was trained on ({(meta.data or {}).get('root')}) is not here, and int8 "
            "needs real images to be judged on: pass --check-data DIR (an ImageFolder with the checkpoint's classes)"
        )
    folder = scan_image_folder(root, expected_classes=meta.labels)
    held = held_out(folder, meta.data)
    plan.check = _load_set(held.samples, meta.spec, folder.root, "gate images")
    if plan.check is None:
        raise BadInputError(f"none of the {len(held.samples)} gate images in {root} could be decoded")
    plan.check.unseen = np.full(len(plan.check.names), held.unseen, dtype=bool)
    judged = set(plan.check.names)
    kept = [s for s in held.samples if s.path.relative_to(folder.root).as_posix() in judged]
    record = calibration_record(kept, folder.classes, folder.root, seed).as_dict()
    plan.image_records = {"gate": record | {"unseen_by_training": int(plan.check.unseen.sum()), "note": held.note}}


def _load_set(samples, spec, root: Path, what: str) -> CheckImages | None:
    """Decode and preprocess a set of samples; unreadable files are reported and left out."""
    from dermmobile.data import load_images

    images = load_images(samples, spec, root, progress=what)
    _report_bad(images.bad)
    return CheckImages(images.arrays, images.names, images.targets, str(root)) if len(images) else None


def _training_root(meta) -> Path | None:
    root = (meta.data or {}).get("root")
    return Path(root) if root and Path(root).is_dir() else None


def _report_bad(bad: list[tuple[str, str]]) -> None:
    import sys

    from dermmobile.display import printable

    for name, reason in bad:
        print(printable(f"skipped {name}: {reason}"), file=sys.stderr)
