"""The accuracy-aware fallback: the search on layers of known sensitivity, then end to end through the exporter."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import tests.fake_target as fake
from dermmobile.quantization.fallback import (
    Attempt,
    Criterion,
    MarginPopulation,
    forecast_agreement,
    ranked_prefixes,
    search,
)
from dermmobile.quantization.simulate import Layer

LABELS = [f"c{i}" for i in range(5)]


def _problem(noise: dict[str, float], bias: float = 1.0, images: int = 400):
    """Reference logits with margins spread from near-tie to confident, and an int8 'artifact' whose error is the sum
    of fixed per-layer error vectors scaled by each quantized layer's sensitivity."""
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (images, len(LABELS)))
    directions = {name: rng.normal(0, 1, reference.shape) for name in noise}

    def logits(float_layers, scale=1.0):
        out = reference.copy()
        for name, size in noise.items():
            if name not in float_layers:
                out += scale * size * directions[name]
        return out

    criterion = Criterion(LABELS, margin=0.0)
    calls: list[frozenset] = []

    def attempt(float_layers):
        calls.append(float_layers)
        return criterion.judge(reference, logits(float_layers), None, "artifact")

    def simulate(batch, float_layers):  # the "images" are row indices here
        return logits(float_layers, bias)[batch.astype(int)]

    tuning = (np.arange(images), reference, None)
    return attempt, simulate, tuning, criterion, calls


LAYERS = [Layer("stem", "conv", 100), Layer("dw", "depthwise", 10), Layer("pw", "conv", 300), Layer("fc", "linear", 5)]


def test_search_leaves_only_the_sensitive_layer_float():
    attempt, simulate, tuning, criterion, calls = _problem({"stem": 0.002, "dw": 0.3, "pw": 0.002, "fc": 0.001})
    simulated = []
    result = search(attempt, lambda batch, float_layers: simulated.append(float_layers) or simulate(batch, float_layers),
                    LAYERS, tuning, criterion, max_float_macs=0.25)  # fmt: skip
    assert result.passed and result.float_layers == ["dw"]
    assert result.float_macs_share == pytest.approx(10 / 415)
    assert calls == [frozenset(), frozenset({"dw"})]  # plain int8, then one real artifact
    # the one file after plain passed: the ranking was not refined (no simulation beyond each layer alone)
    assert len(simulated) == 1 + len(LAYERS) and result.ranking[0] == "dw"
    ranking = [row.layer for row in sorted(result.sensitivity, key=lambda r: r.gain, reverse=True)]
    assert ranking[0] == "dw" and result.sensitivity[1].float_alone["agreement"] > result.baseline["agreement"]


def test_the_ranking_chooses_each_next_layer_given_the_ones_before_it():
    """A tensor between two layers stays float only when both are: here an error that goes away only with "stem" and
    "dw" both float (the stem's output, say), besides each layer's own. One at a time "pw" outranks "dw" (its own
    error is larger), so the plain ranking would build stem, stem + pw, then all three; chosen given the stem, "dw"
    comes next, and the second real file passes with the two layers that matter."""
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, (400, len(LABELS)))
    own = {"stem": 0.15, "dw": 0.0, "pw": 0.01, "fc": 0.0}
    directions = {name: rng.normal(0, 1, reference.shape) for name in [*own, "between"]}

    def logits(float_layers):
        out = reference + sum(size * directions[name] for name, size in own.items() if name not in float_layers)
        return out if {"stem", "dw"} <= float_layers else out + 0.2 * directions["between"]

    criterion, calls = Criterion(LABELS, margin=0.0), []

    def attempt(float_layers):
        calls.append(float_layers)
        return criterion.judge(reference, logits(float_layers), None, "artifact")

    def simulate(batch, float_layers):
        return logits(float_layers)[batch.astype(int)]

    result = search(attempt, simulate, LAYERS, (np.arange(400), reference, None), criterion, max_float_macs=1.0)
    alone = {row.layer: row.gain for row in result.sensitivity}
    assert alone["pw"] > alone["dw"] and max(alone, key=alone.get) == "stem"  # one at a time: stem, pw, dw
    assert result.ranking[:2] == ["stem", "dw"]
    assert calls == [frozenset(), frozenset({"stem"}), frozenset({"stem", "dw"})]
    assert result.passed and sorted(result.float_layers) == ["dw", "stem"]


def test_plain_int8_that_passes_is_kept_without_simulating():
    attempt, _, tuning, criterion, calls = _problem({"dw": 0.001})
    result = search(attempt, None, LAYERS, tuning, criterion)
    assert result.passed and result.float_layers == [] and calls == [frozenset()] and not result.sensitivity


def test_the_mac_cap_is_never_exceeded_and_the_best_attempt_is_kept():
    attempt, simulate, tuning, criterion, calls = _problem({"stem": 0.01, "dw": 0.01, "pw": 0.4, "fc": 0.01})
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.5)
    assert not result.passed  # pw alone is 72 % of the MACs
    assert all("pw" not in c for c in calls)
    assert all(a.float_macs_share <= 0.5 for a in result.attempts)
    best = max(a.forecast_agreement for a in result.attempts if a.source == "artifact")
    assert next(a.forecast_agreement for a in result.attempts if a.float_layers == result.float_layers) == best
    assert result.sensitivity[2].gain == max(row.gain for row in result.sensitivity)  # pw is the one that matters
    assert not any("pw" in prefix for prefix in ranked_prefixes(result.sensitivity, 0.5))
    assert any("pw" in prefix for prefix in ranked_prefixes(result.sensitivity, 0.8))


def test_the_search_grows_from_the_most_sensitive_layer():
    """dw alone misses: the prefix doubles, then stops at the longest one the cap allows, which passes."""
    noise = {"stem": 0.05, "dw": 0.1, "pw": 0.005, "fc": 0.05}
    attempt, simulate, tuning, criterion, _ = _problem(noise, bias=0.4)
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.3)
    real = [(a.float_layers, a.passed) for a in result.attempts if a.source == "artifact"]
    assert [passed for _, passed in real] == [False, False, False, True]
    assert [len(layers) for layers, _ in real] == [0, 1, 2, 3] and real[1][0] == ["dw"]  # 1, 2, then the cap's 3
    assert result.passed and set(result.float_layers) == {"dw", "stem", "fc"}


def test_the_forecast_is_the_share_of_margins_an_error_the_photos_share_would_not_break():
    """Every photo's int8 error takes 0.3 off its top class: the photos whose float margin is below 0.3 flip, and
    the forecast is their share, whichever photos the error was measured on. The top class differs between photos,
    so an error borrowed by class index (not by rank) would hit a runner-up and read otherwise."""
    margins = np.array([0.05, 0.2, 0.29, 0.31, 0.5, 1.0, 2.0, 4.0])
    orders = [[2, 0, 1], [0, 1, 2], [1, 2, 0]]  # each photo's classes in another order
    reference = np.stack([np.array([m, 0.0, -1.0])[orders[i % 3]] for i, m in enumerate(margins)])
    error = np.where(reference == reference.max(axis=1, keepdims=True), -0.3, 0.0)
    assert forecast_agreement(reference, reference + error) == pytest.approx(5 / 8)
    assert forecast_agreement(reference, reference) == 1.0


def test_the_forecast_sees_near_ties_that_the_sample_did_not_break():
    """One photo's large error lands on a confident photo, so nothing flips and the agreement reads 100 %; applied to
    the near-tie photos, that error would flip them, and the forecast says so."""
    reference = np.array([[0.1, 0.0, -1.0]] * 9 + [[5.0, 0.0, -1.0]])
    logits = reference.copy()
    logits[9] = [4.0, 0.5, -1.0]  # the confident photo's error: -1 on its top class, +0.5 on the runner-up
    criterion = Criterion(["a", "b", "c"], margin=0.0)
    report = criterion.judge(reference, logits, None, "artifact")
    assert report.agreement == 1.0 and not report.passed
    assert report.forecast_agreement == pytest.approx(1 - 9 / 90)  # 9 near-ties x the one error, of 10 x 9 pairs
    assert "forecast agreement 90.00% is below the search target 98.0%" in report.failures[0]


def test_the_forecast_counts_unseen_photos_for_the_gates_share_of_them():
    """The tuning photos are confident (trained on): their own error, -0.3 on the top class, breaks none of them.
    Calibration photos the training never fitted sit near ties: 2 of 4 have a margin under 0.3. Weighted as the gate's
    unseen share (40 %), the forecast is 60 % x 1 + 40 % x 1/2; each population photo borrows every error but its own."""
    tuning = np.array([[3.0, 0.0, -1.0], [0.0, 2.5, -1.0], [-1.0, 0.0, 4.0]])
    error = np.where(tuning == tuning.max(axis=1, keepdims=True), -0.3, 0.0)
    calibration = np.array([[0.1, 0.0, -1.0], [0.0, 0.2, -1.0], [1.0, 0.0, -1.0], [5.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    unseen = np.array([True, True, True, True, False])
    population = MarginPopulation.of(tuning, None, calibration, unseen, unseen_share=0.4)
    assert population.weights.sum() == pytest.approx(1.0)
    assert population.weights[:4] == pytest.approx([0.1] * 4) and population.weights[4:] == pytest.approx([0.15] * 4)
    assert forecast_agreement(tuning, tuning + error, population) == pytest.approx(0.6 + 0.4 * 0.5)
    assert forecast_agreement(tuning, tuning + error) == 1.0  # the tuning photos alone see no near-tie
    # Without a share (no gate), or with only one kind of photo, every photo counts the same: 6 of 8 keep.
    assert forecast_agreement(tuning, tuning + error, MarginPopulation.of(tuning, None, calibration, unseen)) == 0.75
    assert population.describe() == {"photos": 8, "tuning_photos": 3, "unseen_by_training": 4, "unseen_weight": 0.4}
    criterion = Criterion(["a", "b", "c"], margin=0.0, population=population)
    report = criterion.judge(tuning, tuning + error, None, "artifact")
    assert report.agreement == 1.0 and report.forecast_agreement == pytest.approx(0.8) and not report.passed


def test_a_photo_never_borrows_its_own_error_from_the_population():
    """Photo 0's own error would flip it; the others' would not: its forecast is 1, photo 1's (which borrows photo 0's
    error) 0, whether the population is the default or the tuning photos given explicitly."""
    reference = np.array([[0.1, 0.0], [0.1, 0.0]])
    logits = np.array([[0.0, 0.5], [0.1, 0.0]])
    explicit = MarginPopulation.of(reference)
    assert forecast_agreement(reference, logits) == forecast_agreement(reference, logits, explicit) == 0.5
    alone = MarginPopulation.of(reference[:1])  # one photo, nothing else to borrow: its observed agreement
    assert forecast_agreement(reference[:1], logits[:1], alone) == 0.0


def test_a_file_with_a_nonfinite_output_is_forecast_to_agree_nowhere():
    reference = np.random.default_rng(0).normal(0, 1, (6, 4))
    logits = reference.copy()
    logits[2, 1] = np.nan
    assert forecast_agreement(reference, logits) == 0.0


def test_with_one_photo_the_forecast_is_its_observed_agreement():
    reference = np.array([[1.0, 0.0]])
    assert forecast_agreement(reference, reference) == 1.0
    assert forecast_agreement(reference, np.array([[0.0, 1.0]])) == 0.0
    assert forecast_agreement(np.zeros((0, 2)), np.zeros((0, 2))) == 1.0


def _hurting_problem(noise: dict, simulated_noise: dict, hurts: str, harm: float, fails: bool = False):
    """Like _problem, but leaving layer `hurts` float adds `harm` x a fixed error to the real file (or, with `fails`,
    its conversion raises); the simulation sees `simulated_noise` instead of `noise`."""
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (400, len(LABELS)))
    directions = {name: rng.normal(0, 1, reference.shape) for name in noise}
    harm_direction = rng.normal(0, 1, reference.shape)

    def logits(float_layers, sizes):
        return reference + sum(size * directions[n] for n, size in sizes.items() if n not in float_layers)

    criterion, calls = Criterion(LABELS, margin=0.0), []

    def attempt(float_layers):
        calls.append(float_layers)
        if hurts in float_layers and fails:
            raise RuntimeError("Weight and Input should both be quantized")
        hurt = harm * harm_direction if hurts in float_layers else 0.0
        return criterion.judge(reference, logits(float_layers, noise) + hurt, None, "artifact")

    def simulate(batch, float_layers):
        return logits(float_layers, simulated_noise)[batch.astype(int)]

    return attempt, simulate, (np.arange(400), reference, None), criterion, calls


def test_a_layer_that_hurts_in_the_real_file_leaves_the_ranking():
    """The simulation overrates fc and ranks it second; in the real file fc in float costs more than it gives (on
    Lite0 a float projection convolution did that in TFLite): dw + fc is worse than dw alone, so fc leaves the
    ranking and dw + stem, the next prefix of that length, is built and passes."""
    noise = {"stem": 0.1, "dw": 0.3, "pw": 0.002, "fc": 0.03}
    attempt, simulate, tuning, criterion, calls = _hurting_problem(noise, dict(noise, fc=0.2), hurts="fc", harm=0.5)
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.3)
    assert calls == [frozenset(), frozenset({"dw"}), frozenset({"dw", "fc"}), frozenset({"dw", "stem"})]
    assert result.passed and result.float_layers == ["dw", "stem"]


@pytest.mark.parametrize("dw_float", ["worse", "fails"])
def test_a_first_layer_that_hurts_alone_leaves_the_ranking(dw_float):
    """The simulation overrates dw's error and ranks it first, and dw in float makes the real file worse than plain
    int8 (on Lite0 the first depthwise convolution did that in ONNX) or cannot be converted at all (ExecuTorch's
    XNNPACK partitioner refused it): dw leaves the ranking and the next ranking's first layer, stem, is built and
    passes."""
    noise = {"stem": 0.1, "dw": 0.02, "pw": 0.002, "fc": 0.002}
    attempt, simulate, tuning, criterion, calls = _hurting_problem(
        noise, dict(noise, dw=0.5), hurts="dw", harm=0.3, fails=dw_float == "fails"
    )
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.3)
    assert calls == [frozenset(), frozenset({"dw"}), frozenset({"stem"})]
    assert result.passed and result.float_layers == ["stem"]
    failed = [a.error for a in result.attempts if a.error]
    assert failed == (["RuntimeError: Weight and Input should both be quantized"] if dw_float == "fails" else [])


def test_plain_int8_that_cannot_be_converted_is_an_error_not_a_fallback():
    def attempt(float_layers):
        raise RuntimeError("converter crashed")

    _, simulate, tuning, criterion, _ = _problem({"dw": 0.3})
    with pytest.raises(RuntimeError, match="converter crashed"):
        search(attempt, simulate, LAYERS, tuning, criterion)


def test_a_pass_after_doubling_bisects_back_for_a_cheaper_file():
    """1 and 2 float layers miss, 4 pass: the search tries 3, which passes too, and keeps it (the cheapest pass)."""
    attempt, simulate, tuning, criterion, _ = _problem({"stem": 0.03, "dw": 0.05, "pw": 0.005, "fc": 0.04})
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=1.0)
    real = [(len(a.float_layers), a.passed) for a in result.attempts if a.source == "artifact"]
    assert real == [(0, False), (1, False), (2, False), (4, True), (3, True)]
    assert result.passed and set(result.float_layers) == {"dw", "fc", "stem"}


def test_max_attempts_bounds_the_real_artifacts():
    attempt, simulate, tuning, criterion, calls = _problem({"stem": 0.2, "dw": 0.2, "pw": 0.01, "fc": 0.2}, bias=0.01)
    search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.3, max_attempts=2)
    assert len(calls) <= 3  # plain + 2


# -- through the exporter, with the fake target ------------------------------------------------
@pytest.fixture
def fake_registry(monkeypatch):
    from dermmobile.targets import _MODULES

    monkeypatch.setitem(_MODULES, "fake", "tests.fake_target")
    monkeypatch.setattr(fake, "BEHAVIOUR", dict(fake.DEFAULT_BEHAVIOUR, layer_noise={}))
    return fake


def _export_int8(checkpoint_path, synthetic_root, out, **options):
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import Int8Options, plan_export, run_plan

    checkpoint = load_checkpoint(checkpoint_path)
    plan = plan_export(checkpoint, "fake", "int8", out, calib_data=synthetic_root, calib_count=18,
                       int8=Int8Options(**{"tune_count": 36} | options))  # fmt: skip
    (outcome,) = run_plan(checkpoint, plan)
    return plan, outcome


# tiny_cnn's layers: "0" (221 k MACs), "3" (295 k), "6" (295 k), "10" (the 9-class head, 288)
SENSITIVE_6 = {"0": 0.02, "3": 0.02, "6": 12.0, "10": 0.02}


def test_fallback_passes_the_gate_and_the_manifest_says_what_it_cost(
    fake_registry, tiny_checkpoint, synthetic_root, tmp_path, capsys
):
    fake.BEHAVIOUR["layer_noise"] = SENSITIVE_6
    plan, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path, max_float_macs=0.5)
    assert outcome.ok, outcome.error
    manifest = json.loads(outcome.artifact.manifest_file.read_text())
    # "10", the logits layer, is float in every attempt (Int8Options.float_logits); "6" is the search's choice
    assert manifest["status"] == "passed" and manifest["float_layers"] == ["10", "6"]
    assert manifest["float_macs_share"] == pytest.approx((294912 + 288) / (221184 + 294912 + 294912 + 288), rel=1e-3)
    assert manifest["op_counts"] == {"int8": 2, "dynamic": 0, "float": 2, "by_op": {}}
    fallback = manifest["fallback"]
    assert fallback["enabled"] and fallback["passed_tuning"] and fallback["criterion"]["images"] == "tuning"
    assert fallback["float_logits"]
    # the forecast breaks the calibration and tuning photos' margins (the checkpoint records no validation files)
    population = {"photos": 18 + 36, "tuning_photos": 36, "unseen_by_training": 0, "unseen_weight": 0.0}
    assert fallback["criterion"]["forecast_population"] == population
    assert [a["float_layers"] for a in fallback["attempts"] if a["source"] == "artifact"] == [["10"], ["10", "6"]]
    assert "10" not in {row["layer"] for row in json.loads((tmp_path / fallback["sensitivity_report"]).read_text())["layers"]}
    assert (tmp_path / fallback["sensitivity_report"]).is_file()
    # calibration, tuning and gate: disjoint, all recorded
    calibration, tuning, gate = (set(plan_names) for plan_names in _sets(plan))
    assert not (calibration & tuning or calibration & gate or tuning & gate)
    assert manifest["calibration"]["count"] == 18 and manifest["tuning_images"]["count"] == len(tuning) == 36
    assert manifest["gate_images"]["count"] == manifest["parity"]["images"] == len(gate) == 90 - 18 - 36
    # inspect says which layers are float and why
    from dermmobile.cli import main

    capsys.readouterr()
    main(["inspect", str(outcome.artifact.path)])
    shown = capsys.readouterr().out
    assert "layers left in float (the logits layer and the fallback's choice): 2 (36.4% of MACs): 10, 6" in shown


def _sets(plan):
    from dermmobile.data import files_digest

    names = [plan.tuning.names, plan.check.names]
    assert files_digest(plan.tuning.names) == plan.image_records["tuning"]["files_sha256"]
    assert files_digest(plan.check.names) == plan.image_records["gate"]["files_sha256"]
    calibration_count = plan.image_records["calibration"]["count"]
    everything = {p.relative_to(plan_root(plan)).as_posix() for p in plan_root(plan).rglob("*.png")}
    calibration = everything - set(names[0]) - set(names[1])
    assert len(calibration) == calibration_count
    return calibration, names[0], names[1]


def plan_root(plan):
    from pathlib import Path

    return Path(plan.check.source)


def test_fallback_that_cannot_pass_within_the_cap_fails_with_what_it_tried(
    fake_registry, tiny_checkpoint, synthetic_root, tmp_path
):
    from dermmobile.errors import EXIT_GATE_FAILED

    fake.BEHAVIOUR["layer_noise"] = SENSITIVE_6
    _, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path, max_float_macs=0.25)
    assert outcome.exit_code == EXIT_GATE_FAILED and "below the 98% gate" in outcome.error
    manifest = json.loads(outcome.artifact.manifest_file.read_text())
    assert manifest["status"] == "failed" and not manifest["fallback"]["passed_tuning"]
    assert all(share <= 0.25 for share in [a["float_macs_share"] for a in manifest["fallback"]["attempts"]])
    assert "6" not in (manifest["float_layers"] or [])


def test_no_fallback_keeps_plain_int8(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    fake.BEHAVIOUR["layer_noise"] = SENSITIVE_6
    _, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path, fallback=False)
    manifest = json.loads(outcome.artifact.manifest_file.read_text())
    assert outcome.exit_code == 3 and manifest["float_layers"] == ["10"] and not manifest["fallback"]["enabled"]


@pytest.mark.parametrize("fallback", [True, False])
def test_int8_logits_quantizes_the_last_layer_too(fake_registry, tiny_checkpoint, synthetic_root, tmp_path, fallback):
    """--int8-logits (float_logits=False): nothing is float unless the search asks; with the fallback off, nothing."""
    fake.BEHAVIOUR["layer_noise"] = {"0": 0.001, "3": 0.001, "6": 0.001, "10": 0.001}
    _, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path, fallback=fallback, float_logits=False)
    manifest = json.loads(outcome.artifact.manifest_file.read_text())
    assert outcome.ok, outcome.error
    assert manifest["float_layers"] == [] and manifest["op_counts"]["float"] == 0 and not manifest["fallback"]["float_logits"]


def test_int8_without_tuning_images_still_keeps_the_logits_float(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    """--tune-count 0: no search, but the logits layer rule holds all the same (one rule, exporter.run_plan)."""
    fake.BEHAVIOUR["layer_noise"] = {"0": 0.001, "3": 0.001, "6": 0.001, "10": 0.001}
    plan, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path, tune_count=0)
    assert plan.tuning is None and outcome.ok, outcome.error
    assert json.loads(outcome.artifact.manifest_file.read_text())["float_layers"] == ["10"]


def test_an_int8_artifact_that_is_silently_float_fails(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    fake.BEHAVIOUR["float_ops"] = 1  # the file has one float op nobody asked for
    _, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path)
    assert outcome.exit_code == 3 and "is not the int8 artifact that was asked for" in outcome.error
    assert json.loads(outcome.artifact.manifest_file.read_text())["status"] == "failed"


def test_explain_writes_the_sensitivity_report(fake_registry, tiny_checkpoint, synthetic_root, tmp_path):
    fake.BEHAVIOUR["layer_noise"] = {"0": 0.01, "3": 0.3, "6": 0.01, "10": 0.01}
    _, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path, explain=True)
    assert outcome.ok, outcome.error
    stem = outcome.artifact.path.name + ".sensitivity"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    rows = {row["layer"]: row for row in report["layers"]}
    assert set(rows) == {"0", "3", "6"}  # "10", the logits layer, is always float: nothing to measure
    assert max(rows, key=lambda name: rows[name]["gain"]) == "3"
    assert rows["3"]["quantized_alone"]["mean_abs_logit"] > rows["0"]["quantized_alone"]["mean_abs_logit"]
    assert re.search(r"^\| 3 +\| conv ", (tmp_path / f"{stem}.md").read_text(), re.MULTILINE)
    assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"


def test_always_float_layers_are_in_every_attempt_and_out_of_the_ranking():
    """The search adds to `always_float` (the logits layer in the exporter): plain int8 is built with it, the
    ranking never offers it, and the kept set names it."""
    attempt, simulate, tuning, criterion, calls = _problem({"stem": 0.002, "dw": 0.3, "pw": 0.002, "fc": 0.2})
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.25, always_float=frozenset({"fc"}))
    assert calls == [frozenset({"fc"}), frozenset({"fc", "dw"})]
    assert result.passed and result.float_layers == ["fc", "dw"]
    assert result.float_macs_share == pytest.approx(15 / 415)
    assert {row.layer for row in result.sensitivity} == {"stem", "dw", "pw"}
    assert all("fc" in a.float_layers for a in result.attempts)


@pytest.mark.parametrize("simulation", [True, False])
def test_a_plain_int8_pass_keeps_the_always_float_layers(simulation):
    """The early returns (plain int8 passes; no simulation to search with) keep the float set that was built."""
    noise = {"dw": 0.001} if simulation else {"dw": 0.3}
    attempt, simulate, tuning, criterion, calls = _problem(noise)
    result = search(attempt, simulate if simulation else None, LAYERS, tuning, criterion, always_float=frozenset({"fc"}))
    assert calls == [frozenset({"fc"})] and result.float_layers == ["fc"] and result.passed == simulation
    assert result.float_macs_share == pytest.approx(5 / 415)


@pytest.mark.parametrize("zero_point, quant_min", [(-128, -128), (3, -128), (0, -127), (-7, -128)])
def test_simulated_fake_quantize_gives_torchs_values(zero_point, quant_min):
    """The simulation's per-tensor fake-quantize (in-place passes, for speed) equals torch's kernel value for value,
    ties, saturation and the float32 inverse scale included."""
    import torch
    from torch.ao.quantization.observer import MinMaxObserver

    from dermmobile.quantization.simulate import _SwitchableFakeQuant

    generator = torch.Generator().manual_seed(zero_point)
    x = torch.randn(4, 8, 32, 32, generator=generator) * 3
    observer = MinMaxObserver(dtype=torch.qint8, quant_min=quant_min, quant_max=127)
    for scale in (0.0235, 0.05, 1 / 3, 0.0117):
        observer.calculate_qparams = lambda s=scale: (torch.tensor([s]), torch.tensor([zero_point]))
        switch = _SwitchableFakeQuant.make(observer)
        s = float(switch.scale[0])
        ties = (torch.arange(-300, 300, dtype=torch.float32) + 0.5) * s  # exactly halfway between grid points
        for values in (x, ties):
            expected = torch.fake_quantize_per_tensor_affine(values, s, zero_point, quant_min, 127)
            assert torch.equal(switch(values), expected), (scale, zero_point)


def test_files_are_compared_by_their_forecast_not_their_mean_logit_error():
    """A few large errors (one photo moved by 1.5) make a small mean but would flip every photo they met; a moderate
    error on every photo (0.6, under each 1.0 margin) makes a larger mean but flips none. The search keeps, and
    prefers, the second."""
    from dermmobile.quantization.fallback import FallbackResult, _keep_best, _worse

    criterion = Criterion(["a", "b", "c"])
    reference = np.tile([1.0, 0.0, -1.0], (10, 1))
    few_large, everywhere = reference.copy(), reference.copy()
    few_large[0, 0] -= 1.5
    everywhere[:, 0] -= 0.6

    def built(logits, layers, share):
        report = criterion.judge(reference, logits, None, "x")
        return Attempt(layers, share, report.agreement, report.mean_abs_logit, 0.0, report.passed, "artifact",
                       forecast_agreement=report.forecast_agreement)  # fmt: skip

    small_mean, no_flips = built(few_large, ["fc"], 0.0), built(everywhere, ["fc", "stem"], 0.1)
    assert small_mean.mean_abs_logit < no_flips.mean_abs_logit
    assert small_mean.forecast_agreement == pytest.approx(0.9) and no_flips.forecast_agreement == 1.0
    failed = Attempt(["fc", "dw"], 0.05, 0.0, None, None, False, "artifact", error="RuntimeError: refused")
    assert _worse(small_mean, no_flips) and not _worse(no_flips, small_mean) and _worse(failed, small_mean)
    small_mean.passed = no_flips.passed = False  # neither met the criterion: the better file is kept
    kept = _keep_best(FallbackResult([], 0.0, False, [small_mean, no_flips, failed]))
    assert kept.float_layers == ["fc", "stem"] and "forecast 100.00%" in kept.note


def _run_problem(passes_with=frozenset({"stem", "dw"}), hurts: str | None = None):
    """An int8 file whose error barely moves for each float layer (0.01 each), but falls to almost nothing once all
    of `passes_with` is float (on Lite0 a run of the stem and the first blocks did that); with `hurts`, that layer
    float without the rest makes it worse than plain int8. The simulation ranks fc first, then stem, then dw."""
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (400, len(LABELS)))
    direction = rng.normal(0, 1, reference.shape)
    simulated = {"fc": 0.2, "stem": 0.1, "dw": 0.05, "pw": 0.01}
    directions = {name: rng.normal(0, 1, reference.shape) for name in simulated}
    criterion, calls = Criterion(LABELS, margin=0.0), []

    def attempt(float_layers):
        calls.append(float_layers)
        if passes_with <= float_layers:
            size = 0.01
        elif hurts in float_layers:
            size = 0.35
        else:
            size = 0.3 - 0.01 * len(float_layers)
        return criterion.judge(reference, reference + size * direction, None, "artifact")

    def simulate(batch, float_layers):
        noise = sum(size * directions[n] for n, size in simulated.items() if n not in float_layers)
        return (reference + noise)[batch.astype(int)]

    return attempt, simulate, (np.arange(400), reference, None), criterion, calls


def test_when_the_ranking_fails_a_float_run_from_the_input_end_is_tried():
    """Under a cap of 27 % of MACs the ranking offers fc, then fc + stem (dw would break the cap): both miss. The
    runs from the input end come next: the stem alone, then stem + dw, which passes and is kept (the search before
    these runs kept fc + stem, and failed)."""
    from dermmobile.quantization.fallback import input_end_runs

    attempt, simulate, tuning, criterion, calls = _run_problem()
    result = search(attempt, simulate, LAYERS, tuning, criterion, max_float_macs=0.27)
    assert calls == [frozenset(), frozenset({"fc"}), frozenset({"fc", "stem"}), frozenset({"stem"}),
                     frozenset({"stem", "dw"})]  # fmt: skip
    assert result.passed and result.float_layers == ["stem", "dw"]
    assert input_end_runs(LAYERS, frozenset(), 0.27) == [["stem"], ["stem", "dw"]]
    assert input_end_runs(LAYERS, frozenset({"stem"}), 1.0) == [["dw"], ["dw", "pw"], ["dw", "pw", "fc"]]
    assert input_end_runs(LAYERS, frozenset(), 0.2) == []  # the stem alone is 24 % of MACs


def test_a_run_worse_than_the_one_before_is_a_miss_not_the_end_of_the_runs():
    """Runs of 1, 2, 4 layers: a + b is worse than a alone (b hurts until c is float too), yet the runs go on; four
    layers pass, three pass too, and three are kept. In the ranking's walk b would have been dropped for good."""
    from dermmobile.quantization.fallback import _keep_best, _Search, input_end_runs

    layers = [Layer(name, "conv", 10) for name in "abcde"]
    attempt, _, _, _, calls = _run_problem(passes_with=frozenset("abc"), hurts="b")
    search_state = _Search(attempt, layers, lambda message: None, frozenset())
    search_state.try_real([])
    search_state.grow(input_end_runs(layers, frozenset(), 1.0), budget=10)
    assert calls == [frozenset(), frozenset("a"), frozenset("ab"), frozenset("abcd"), frozenset("abc")]
    assert _keep_best(search_state.result).float_layers == ["a", "b", "c"]


@pytest.mark.parametrize("disk_full", [False, True])
def test_a_kept_earlier_attempt_is_put_back_not_converted_again(
    fake_registry, tiny_checkpoint, synthetic_root, tmp_path, monkeypatch, disk_full
):
    """When the search keeps an attempt that was not the last one built, its own file (the one judged on the tuning
    images) is put back at the final path with its manifest, and nothing is converted again. When the copy cannot
    be made (a full temporary disk), the kept attempt is converted again instead: the export still succeeds."""
    import tempfile

    import dermmobile.quantization.export as int8_export
    from dermmobile.quantization.fallback import FallbackResult

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-temp"))
    (tmp_path / "system-temp").mkdir()
    conversions = []
    convert = fake.FakeTarget.export
    monkeypatch.setattr(fake.FakeTarget, "export", lambda self, request: conversions.append(1) or convert(self, request))
    judged = {}

    def keeps_the_first(attempt, simulate, layers, tuning, criterion, *args, **kwargs):
        for float_layers in (frozenset({"10", "6"}), frozenset({"10"})):
            attempt(float_layers)
            (built,) = (tmp_path / "out").glob("*.fake")
            judged[float_layers] = built.read_bytes()
        return FallbackResult(["10", "6"], 0.36, True, note="kept the first")

    monkeypatch.setattr(int8_export, "search", keeps_the_first)
    if disk_full:

        def no_space(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(int8_export.shutil, "copyfile", no_space)
    _, outcome = _export_int8(tiny_checkpoint, synthetic_root, tmp_path / "out")
    assert outcome.ok, outcome.error
    assert len(conversions) == 2 + disk_full and judged[frozenset({"10", "6"})] != judged[frozenset({"10"})]
    assert (outcome.artifact.path.read_bytes() == judged[frozenset({"10", "6"})]) != disk_full  # converted again
    manifest = json.loads(outcome.artifact.manifest_file.read_text())
    assert manifest["float_layers"] == ["10", "6"] and manifest["op_counts"]["float"] == 2
    from dermmobile.artifact import load_artifact  # the manifest describes the file put back: it loads and verifies

    assert load_artifact(outcome.artifact.manifest_file).manifest.sha256 == manifest["sha256"]
    assert not any((tmp_path / "system-temp").iterdir())  # the copies are gone


@pytest.mark.parametrize("toolchain, clamp", [("litert", True), ("xnnpack", None)])
def test_simulating_the_float_sets_together_gives_each_sets_own_values(toolchain, clamp):
    """Simulation.each (one full run per batch, each set rerun where it switches a quantizer) gives what
    Simulation.logits gives one set at a time (up to float rounding: its batches have other sizes): every layer
    alone, none, all, and a pair, on a stem and a residual EfficientNet-Lite block (pads, ReLU6, depthwise)."""
    import torch
    from torch import nn

    from dermmobile.efficientnet_lite import MBConv, SameConv2d
    from dermmobile.quantization.simulate import Simulation

    torch.manual_seed(0)
    model = nn.Sequential(SameConv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU6(), MBConv(8, 8, 3, 1, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip
    images = np.random.default_rng(0).normal(size=(11, 3, 24, 24)).astype(np.float32)
    simulation = Simulation(model, toolchain, images, clamp=clamp)
    names = [layer.name for layer in simulation.layers]
    sets = [frozenset(), *(frozenset({name}) for name in names), frozenset(names), frozenset(names[1:3])]
    together = simulation.each(images, sets, memory=500_000)  # batches of 2, 3, 3, 3 photos
    for float_layers, logits in zip(sets, together):
        np.testing.assert_allclose(logits, simulation.logits(images, float_layers), rtol=0, atol=1e-5)
    assert not np.array_equal(together[0], together[-3])  # the sets differ: the test compares different values


@pytest.mark.parametrize("toolchain, clamp", [("litert", True), ("xnnpack", None)])
def test_a_layer_simulated_float_gets_its_float_weights_back(toolchain, clamp):
    """The toolchain gets weights already rounded (GPTQ) and biases corrected, but a layer the fallback leaves float
    keeps its float ones in the real file. The simulation given the float model does the same: "layer L float" then
    computes L with its float weights and bias (close to a simulation of a model that has them; the same but for
    activation ranges calibrated on the other weights), each() agrees with logits(), and every call leaves the
    graph's rounded weights in place."""
    import copy

    import torch
    from torch import nn

    from dermmobile.efficientnet_lite import MBConv, SameConv2d
    from dermmobile.quantization.bias_correction import fold_batch_norms
    from dermmobile.quantization.simulate import Simulation

    torch.manual_seed(0)
    model = nn.Sequential(SameConv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU6(), MBConv(8, 8, 3, 1, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip
    images = np.random.default_rng(0).normal(size=(9, 3, 24, 24)).astype(np.float32)
    folded = fold_batch_norms(model, torch.from_numpy(images[:1]))
    rounded = copy.deepcopy(folded)
    layers = {name: module for name, module in rounded.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    with torch.no_grad():  # what GPTQ and bias correction do, coarsely: other weights, other biases
        for module in layers.values():
            module.weight.add_(0.3 * module.weight.std() * torch.randn_like(module.weight))
            module.bias.add_(0.2)
    simulation = Simulation(rounded, toolchain, images, clamp=clamp, float_model=folded)
    without = Simulation(rounded, toolchain, images, clamp=clamp)  # the float weights unknown: rounded ones kept
    all_int8 = simulation.logits(images)
    sets = [frozenset({name}) for name in layers]
    together = simulation.each(images, [frozenset(), *sets], memory=500_000)
    np.testing.assert_allclose(together[0], all_int8, rtol=0, atol=1e-5)
    for float_layers, logits in zip(sets, together[1:]):
        alone = simulation.logits(images, float_layers)
        np.testing.assert_allclose(logits, alone, rtol=0, atol=1e-5)
        (name,) = float_layers
        given = copy.deepcopy(rounded)  # a model that has this layer's float weights: what the real file computes
        dict(given.named_modules())[name].load_state_dict(dict(folded.named_modules())[name].state_dict())
        expected = Simulation(given, toolchain, images, clamp=clamp).logits(images, float_layers)
        assert np.abs(alone - expected).mean() < 0.2 * np.abs(without.logits(images, float_layers) - expected).mean()
    np.testing.assert_array_equal(simulation.logits(images), all_int8)  # the rounded weights are back
    assert set(simulation.parameters) == set(layers)
