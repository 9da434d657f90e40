"""Export orchestration, independent of any real format: validation, gates, atomicity, isolation."""

from __future__ import annotations

import json

import pytest

import tests.fake_target as fake
from dermmobile.artifact import find_artifacts, load_artifact
from dermmobile.checkpoint import load_checkpoint
from dermmobile.errors import EXIT_EXPORT_FAILED, EXIT_GATE_FAILED, BadInputError
from dermmobile.exporter import plan_export, run_plan
from dermmobile.targets import _MODULES, resolve


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setitem(_MODULES, "fake", "tests.fake_target")
    monkeypatch.setattr(fake, "BEHAVIOUR", dict(fake.DEFAULT_BEHAVIOUR, layer_noise={}))
    return fake


def _export(checkpoint_path, out, target="fake", quantize="none", **kwargs):
    checkpoint = load_checkpoint(checkpoint_path)
    plan = plan_export(checkpoint, target, quantize, out, **kwargs)
    return plan, run_plan(checkpoint, plan)


def test_impossible_combinations_are_refused_before_any_work():
    with pytest.raises(BadInputError, match="torchscript --quantize fp16 does not exist. Valid combinations: .*onnx: none"):
        resolve("torchscript", "fp16")
    with pytest.raises(BadInputError, match="unknown target 'tensorrt'.*tflite"):
        resolve("tensorrt", "none")
    with pytest.raises(BadInputError, match="unknown quantization 'int4'"):
        resolve("onnx", "int4")


def test_int8_without_calibration_images_is_refused(fake_registry, tiny_checkpoint, tmp_path):
    with pytest.raises(BadInputError, match="--calib-data"):
        _export(tiny_checkpoint, tmp_path, quantize="int8")
    assert not any(tmp_path.iterdir())


def test_manifest_carries_everything_and_parity_passes(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    _plan, outcomes = _export(tiny_checkpoint, tmp_path, quantize="int8", calib_data=synthetic_root, calib_count=18)
    (outcome,) = outcomes
    assert outcome.ok, outcome.error
    manifest = load_artifact(outcome.artifact.path).manifest
    assert manifest.status == "passed" and manifest.parity["agreement"] == 1.0
    assert manifest.labels[0] == "acne" and manifest.preprocess["crop"] == 64
    assert manifest.calibration["count"] == 18 and sum(manifest.calibration["per_class"].values()) == 18
    assert manifest.input.shape == [1, 3, 64, 64] and manifest.toolchain["fake"] == "1"
    # calibration and tuning images are never used to judge the calibrated artifact
    assert manifest.tuning_images["count"] == 36  # half of what calibration left: the other half judges
    assert manifest.parity["images"] == manifest.gate_images["count"] == 90 - 18 - 36
    assert [p.name for p in find_artifacts(tmp_path)] == ["tiny_cnn-fake-int8.fake.json"]


def test_failed_gate_keeps_artifact_marks_it_and_exits_3(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    fake.BEHAVIOUR["noise"] = 5.0
    _, (outcome,) = _export(tiny_checkpoint, tmp_path, check_data=synthetic_root)
    assert outcome.exit_code == EXIT_GATE_FAILED
    assert "tiny_cnn-fake-none.fake: top-1 agreement" in outcome.error and "below the 100% gate" in outcome.error
    assert "max abs logit error" in outcome.error
    manifest = json.loads((tmp_path / "tiny_cnn-fake-none.fake.json").read_text())
    assert manifest["status"] == "failed" and manifest["parity"]["failures"]


def test_nan_outputs_fail_the_gate_with_a_count(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    fake.BEHAVIOUR["nan_rows"] = 3
    _, (outcome,) = _export(tiny_checkpoint, tmp_path, check_data=synthetic_root)
    # the exporter runs 16 images per call and the fake spoils 3 rows of each: 6 calls, 18 rows
    assert "18 of 90 outputs contain NaN or Inf" in outcome.error


def test_failing_converter_leaves_no_file_and_spares_the_others(fake_registry, tiny_checkpoint, tmp_path, monkeypatch):
    fake.BEHAVIOUR["raise"] = "converter exploded"
    checkpoint = load_checkpoint(tiny_checkpoint)
    plan = plan_export(checkpoint, ["fake"], "none", tmp_path)
    plan.targets = [fake.TARGET, resolve("torchscript", "none")[0]]
    outcomes = run_plan(checkpoint, plan)
    assert outcomes[0].exit_code == EXIT_EXPORT_FAILED and "converter exploded" in outcomes[0].error
    assert outcomes[1].ok, outcomes[1].error
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["converters.log", "tiny_cnn-torchscript-none.ptl", "tiny_cnn-torchscript-none.ptl.json"]
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("behaviour, message", [({"hang": 30.0}, "exceeded --timeout"), ({"crash": True}, "process died")])
def test_isolated_conversion_survives_hangs_and_crashes(
    fake_registry, tiny_checkpoint, tmp_path, behaviour, message, monkeypatch
):
    monkeypatch.setenv("DERMMOBILE_FAKE_TARGET", json.dumps(behaviour))  # the spawned converter reads it
    # 10 s: a spawned converter imports torch first, which takes seconds on a loaded 2-core machine
    _, (outcome,) = _export(tiny_checkpoint, tmp_path, timeout=10)
    assert outcome.exit_code == EXIT_EXPORT_FAILED and message in outcome.error
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["converters.log"]


def test_exports_of_one_artifact_name_are_serialized(fake_registry, tiny_checkpoint, tmp_path):
    """Two writers of the same artifact never overlap, so its file and manifest always match."""
    import threading

    fake.BEHAVIOUR["hang"] = 0.5  # each conversion takes a while inside the lock
    spans: list[tuple[float, float]] = []
    original = fake.FakeTarget.export

    def timed_export(self, request):
        import time

        start = time.monotonic()
        result = original(self, request)
        spans.append((start, time.monotonic()))
        return result

    fake.FakeTarget.export = timed_export
    try:
        threads = [threading.Thread(target=_export, args=(tiny_checkpoint, tmp_path)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        fake.FakeTarget.export = original
    (first, second) = sorted(spans)
    assert first[1] <= second[0], f"exports overlapped: {spans}"
    load_artifact(tmp_path / "tiny_cnn-fake-none.fake")


def test_isolated_real_conversion_after_torch_has_run(tiny_checkpoint, synthetic_root, tmp_path):
    """The parent has run torch (its thread pool exists) before the isolated conversion starts:
    a forked child deadlocked here; the spawned one finishes and passes its gate."""
    _, (outcome,) = _export(tiny_checkpoint, tmp_path, target="torchscript", check_data=synthetic_root, timeout=240)
    assert outcome.ok, outcome.error
    assert outcome.artifact.manifest.status == "passed"


def test_parity_without_data_uses_the_checkpoints_held_out_files(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    """No --check-data: the check images are data.held_out's answer, the recorded test files, not every image."""
    from dataclasses import replace

    from dermmobile.checkpoint import save_checkpoint

    checkpoint = load_checkpoint(tiny_checkpoint)
    test_files = ["wheal/wheal_003.png", "acne/acne_001.png"]
    meta = replace(checkpoint.meta, data={"root": str(synthetic_root), "test_files": test_files})
    path = save_checkpoint(tmp_path / "held.safetensors", checkpoint.model, meta)
    plan = plan_export(load_checkpoint(path), "fake", "none", tmp_path / "out")
    assert plan.check.names == sorted(test_files)
