"""`--quantize int8` for one target: plain int8, then the accuracy-aware fallback, then the manifest says what it cost.

The exporter calls `export_int8` when a plan has tuning images. Each attempt is a real
artifact written at the final path and judged by its own runtime on the tuning images;
the search (fallback.py) decides which layers stay float. The gate images are judged
afterwards by the exporter, once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from dermmobile.quantization.fallback import (
    Criterion,
    FallbackResult,
    MarginPopulation,
    measure_sensitivity,
    search,
    simulate_each,
    spread,
)
from dermmobile.quantization.simulate import float_share, model_layers
from dermmobile.targets.base import TorchRuntime, batched


class _LazySimulation:
    """Builds the target's simulation (an export and a calibration) only if the search gets that far."""

    def __init__(self, factory):
        self.factory, self.simulate = factory, None

    def __call__(self, images: np.ndarray, float_layers: frozenset[str]) -> np.ndarray:
        return self._built()(images, float_layers)

    def each(self, images: np.ndarray, float_sets: list[frozenset[str]], log=lambda message: None) -> list[np.ndarray]:
        return simulate_each(self._built(), images, float_sets, log)

    def _built(self):
        if self.simulate is None:
            self.simulate = self.factory()
        return self.simulate


def export_int8(checkpoint, target, plan):
    """Export `target` int8 for `plan`, leaving layers in float where the tuning images need it; returns the Artifact."""
    with _BuiltFiles() as built:
        return _export_int8(checkpoint, target, plan, built)


def _export_int8(checkpoint, target, plan, built: _BuiltFiles):
    from dermmobile.exporter import export_artifact
    from dermmobile.targets import get_target

    options, tuning = plan.int8, plan.tuning
    labels = list(checkpoint.meta.labels)
    reference = batched(TorchRuntime(checkpoint.model).predict, tuning.arrays, 16)
    criterion = Criterion(labels, options.tune_margin, forecast_population(checkpoint, plan, reference))
    layers = plan_layers(checkpoint, plan)
    base = always_float(checkpoint, plan, layers)

    def attempt(float_layers: frozenset[str]):
        artifact = export_artifact(checkpoint, target, plan, float_layers)
        built.save(float_layers, artifact)
        runtime = get_target(target.name).load(artifact.path, artifact.manifest)
        logits = batched(runtime.predict, tuning.arrays, 16)
        return criterion.judge(reference, logits, tuning.targets, artifact.path.name)

    factory = getattr(target, "simulation", None)
    simulate = _LazySimulation(lambda: factory(simulation_request(checkpoint, target, plan))) if factory else None
    log = _logger(f"{target.name} int8")
    if options.fallback:
        result = search(attempt, simulate, layers, (tuning.arrays, reference, tuning.targets), criterion,
                        options.max_float_macs, options.max_attempts, options.sensitivity_images, log,
                        base)  # fmt: skip
    else:
        report = attempt(base)
        result = FallbackResult(sorted(base), float_share(layers, base), report.passed,
                                note="fallback off (--no-fallback): plain int8")  # fmt: skip
    if options.explain and simulate is not None and not (result.sensitivity and result.sensitivity[0].quantized_alone):
        log("measuring per-layer sensitivity for --explain")
        subset = spread(len(tuning.arrays), options.sensitivity_images)
        result.baseline, result.sensitivity = measure_sensitivity(
            simulate, layers, tuning.arrays[subset], reference[subset],
            None if tuning.targets is None else tuning.targets[subset], labels, quantized_alone=True, log=log,
            always_float=base,
        )  # fmt: skip
    artifact = built.restore(result.float_layers)  # an earlier attempt kept: its file put back, not converted again
    if artifact is None:
        artifact = export_artifact(checkpoint, target, plan, frozenset(result.float_layers))
    _record(artifact, result, layers, options, criterion, target)
    return artifact


class _BuiltFiles:
    """A copy of each attempt's file and manifest, so that when the search keeps an earlier attempt its file is put
    back instead of converted again (a TFLite conversion of Lite0 is about a minute on 2 cores; the copy, milliseconds).
    The copies live in a private temporary folder, removed on the way out; a Core ML package (a folder) is not
    copied and is converted again if kept."""

    def __enter__(self) -> _BuiltFiles:
        import tempfile

        from dermmobile.interrupts import deferred

        self.saved: dict = {}
        self.last: tuple | None = None  # (float set, Artifact) of the attempt built last: the file at the final path
        with deferred():  # a signal cannot fall between creating the folder and knowing its name
            self.folder = Path(tempfile.mkdtemp(prefix="dermmobile-int8-attempts-"))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def save(self, float_layers, artifact) -> None:
        from dermmobile.artifact import artifact_digest

        self.last = (frozenset(float_layers), artifact)
        if not artifact.path.is_file() or artifact.path.is_symlink():
            return
        copy = self.folder / f"{len(self.saved)}{artifact.path.suffix}"
        try:
            shutil.copyfile(artifact.path, copy, follow_symlinks=False)
        except OSError:  # a full temporary disk costs a conversion if this one is kept, not the export
            copy.unlink(missing_ok=True)
            return
        if artifact_digest(copy) == artifact.manifest.sha256:  # the file its manifest describes, nothing else
            self.saved[frozenset(float_layers)] = (artifact, copy)

    def restore(self, float_layers):
        """The artifact of `float_layers` at its final path: as it is when it was the last one built, else its copy
        put back with its manifest; None when there is no copy."""
        from dermmobile.artifact import Artifact, artifact_digest, write_manifest
        from dermmobile.fsutil import atomic_path

        if self.last is not None and self.last[0] == frozenset(float_layers):
            return self.last[1]
        if frozenset(float_layers) not in self.saved:
            return None
        artifact, copy = self.saved[frozenset(float_layers)]
        with atomic_path(artifact.path) as tmp:
            shutil.copyfile(copy, tmp, follow_symlinks=False)
            written = artifact_digest(tmp)
        write_manifest(artifact.path, artifact.manifest, expected_sha256=written)
        return Artifact(artifact.path, artifact.manifest)


def simulation_request(checkpoint, target, plan):
    """The request a target's simulation is built from: the model the toolchain gets (weights rounded for int8:
    GPTQ, bias correction), and the same model with batch norm folded but nothing rounded, whose weights a layer
    left float gets back in the simulation as in the real file (simulate._float_parameters)."""
    import torch

    from dermmobile.exporter import export_request
    from dermmobile.quantization.bias_correction import fold_batch_norms

    request = export_request(checkpoint, target, plan)
    if request.model is not checkpoint.model:  # rounded: otherwise the float weights are the model's own
        example = torch.from_numpy(np.ascontiguousarray(plan.calibration[:1], dtype=np.float32))
        request.float_model = fold_batch_norms(checkpoint.model, example)
    return request


def forecast_population(checkpoint, plan, tuning_reference: np.ndarray) -> MarginPopulation:
    """The photos the search's forecast is made on (fallback.MarginPopulation): calibration and tuning, those that
    training never fitted weighted to the gate's share of photos unseen by training."""
    calibration_reference = batched(TorchRuntime(checkpoint.model).predict, plan.calibration, 16)
    gate = plan.check
    share = float(gate.unseen.mean()) if gate is not None and gate.unseen is not None and len(gate.unseen) else None
    return MarginPopulation.of(tuning_reference, plan.tuning.unseen, calibration_reference, plan.calibration_unseen,
                               share)  # fmt: skip


def plan_layers(checkpoint, plan):
    """The checkpoint's quantizable layers for the plan's input shape (simulate.model_layers)."""
    import torch

    return model_layers(checkpoint.model, torch.from_numpy(np.ascontiguousarray(plan.calibration[:1])))


def always_float(checkpoint, plan, layers=None) -> frozenset[str]:
    """The layers an int8 export of `plan` leaves in float whatever the search does: the logits layer, unless
    --int8-logits; for a QAT checkpoint, the layers it trained in float (qat.py). `layers`: plan_layers, when
    already known (computing them exports the model, so it is done only when the rule applies)."""
    if plan.quantize == "int8" and checkpoint.meta.qat:
        from dermmobile.qat import recorded_float_layers

        return recorded_float_layers(checkpoint.meta, checkpoint.path)
    if plan.quantize != "int8" or not plan.int8.float_logits or plan.calibration is None:
        return frozenset()
    return logits_layer(layers if layers is not None else plan_layers(checkpoint, plan))


def logits_layer(layers) -> frozenset[str]:
    """The layer that computes the logits: the last quantizable layer in graph order (no layer reads its output)."""
    return frozenset({layers[-1].name}) if layers else frozenset()


def _record(artifact, result: FallbackResult, layers, options, criterion: Criterion, target) -> None:
    """The fallback's decisions in the manifest, and the sensitivity report beside the artifact."""
    from dermmobile.artifact import write_manifest
    from dermmobile.parity import TOLERANCES
    from dermmobile.quantization.report import write_sensitivity_report

    manifest = artifact.manifest
    manifest.float_layers = list(result.float_layers)
    manifest.float_macs_share = round(float_share(layers, result.float_layers), 6)
    report_file = None
    if result.sensitivity:
        report_file = write_sensitivity_report(artifact.path, result, layers).name
    manifest.fallback = {
        "enabled": options.fallback,
        "criterion": {
            "images": "tuning",
            "min_agreement": TOLERANCES["int8"].min_agreement,
            "max_accuracy_drop_points": TOLERANCES["int8"].max_accuracy_drop,
            "min_forecast_agreement": criterion.min_forecast_agreement,  # fallback.forecast_agreement
            "forecast_population": criterion.population.describe() if criterion.population is not None else None,
        },
        "max_float_macs": options.max_float_macs,
        "float_logits": options.float_logits,
        "passed_tuning": result.passed,
        "note": result.note,
        "ranking": list(result.ranking),  # the order the search added layers in (fallback.refined_ranking)
        "attempts": [vars(a) for a in result.attempts],
        "sensitivity_report": report_file,
        "simulation": getattr(target, "name", "?") + " PT2E simulation" if result.sensitivity else None,
        "total_macs": sum(layer.macs for layer in layers),
        "layers": len(layers),
    }
    write_manifest(artifact.path, manifest)


def _logger(prefix: str):
    from dermmobile.chatter import say

    def log(message: str) -> None:
        say(f"{prefix}: {message}")

    return log
