"""Parity metrics against hand-computed values, and the gates' verdicts and messages."""

from __future__ import annotations

import numpy as np
import pytest

from dermmobile.parity import TOLERANCES, apply_gate, compare_logits

LABELS = ["a", "b", "c"]
REFERENCE = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 4.0], [0.0, 0.0, 1.0]])


def test_metrics_by_hand():
    candidate = REFERENCE + np.array([[0.5, 0, 0], [0, 0, 1.0], [0, 0, 0], [0, 0, -0.5]])
    report = compare_logits(REFERENCE, candidate, LABELS, ["i0", "i1", "i2", "i3"], targets=np.array([0, 1, 2, 0]))
    assert report.agreement == 0.75  # image 1 flips b -> c
    assert [(f.image, f.reference, f.artifact, f.margin) for f in report.flips] == [("i1", "b", "c", 0.5)]
    assert report.max_abs_logit == 1.0 and report.mean_abs_logit == pytest.approx(2.0 / 12)
    cos1 = (0 * 0 + 2 * 2 + 1.5 * 2.5) / (np.linalg.norm([0, 2, 1.5]) * np.linalg.norm([0, 2, 2.5]))
    assert report.min_cosine == pytest.approx(cos1)
    assert report.accuracy == 0.5 and report.reference_accuracy == 0.75
    assert report.reference_max_abs == 4.0 and report.reference_margin_median == pytest.approx(np.median([2, 0.5, 3, 1]))


def test_nonfinite_rows_never_agree_and_fail_the_gate():
    candidate = REFERENCE.copy()
    candidate[2, 1] = np.nan
    report = apply_gate(compare_logits(REFERENCE, candidate, LABELS), "none", "m.onnx")
    assert report.nonfinite == 1 and report.agreement == 0.75 and report.flips[0].artifact == "NaN/Inf"
    assert "m.onnx: 1 of 4 outputs contain NaN or Inf" in report.failures[0]


def test_fp32_gate_is_absolute_and_fp16_gate_scales_with_the_logits():
    nudged = REFERENCE + 2e-3
    assert not apply_gate(compare_logits(REFERENCE, nudged, LABELS), "none", "x").passed
    assert apply_gate(compare_logits(REFERENCE, nudged, LABELS), "fp16", "x").passed
    big = REFERENCE * 10  # largest logit 40: the fp16 bound is 0.4
    report = apply_gate(compare_logits(big, big + 0.5, LABELS), "fp16", "x.tflite")
    assert report.failures == [
        "x.tflite: max abs logit error 0.5 is above the 0.4 gate for fp16 (0.01 x largest reference logit 40)"
    ]


def test_int8_gate_needs_98_percent_agreement_and_at_most_a_point_of_accuracy():
    reference = np.tile(np.eye(3) * 5, (34, 1))[:100]
    targets = reference.argmax(1)
    candidate = reference.copy()
    candidate[:2] = candidate[:2][:, [1, 2, 0]]  # two of 100 flip: 98 %, 2 points of accuracy lost
    report = apply_gate(compare_logits(reference, candidate, LABELS, targets=targets), "int8", "q.tflite")
    assert report.agreement == 0.98
    assert report.failures == [
        "q.tflite: top-1 accuracy 98.00% is 2.00 points below the PyTorch model's 100.00%; the gate allows 1"
    ]
    candidate[2] = candidate[2][[1, 2, 0]]
    report = apply_gate(compare_logits(reference, candidate, LABELS), "int8", "q.tflite")
    assert report.failures == ["q.tflite: top-1 agreement 97.00% is below the 98% gate for int8 (3 flips)"]


def test_every_quantization_has_a_tolerance_with_a_reason():
    from dermmobile.targets.base import QUANTIZATIONS

    assert set(TOLERANCES) == set(QUANTIZATIONS)
    assert all(t.why for t in TOLERANCES.values())


def test_an_exact_tie_in_the_reference_accepts_either_tied_class():
    """int8 references (a QAT model's fake-quantized logits) tie exactly; argmax then picks by index, not by the model."""
    reference = np.array([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [1.0, 3.0, 0.0]])
    candidate = np.array([[1.9, 2.1, 0.0], [1.9, 1.9, 2.5], [1.0, 3.0, 0.0]])
    report = compare_logits(reference, candidate, LABELS, ["tie-b", "tie-c", "plain"])
    # b is one of the reference's tied answers; c is not.
    assert report.agreement == pytest.approx(2 / 3)
    assert [(f.image, f.reference, f.artifact, f.margin) for f in report.flips] == [("tie-c", "a", "c", 0.0)]
