"""Labeled-set parity of one artifact against the reference: accuracy, agreement, confusion drift.

The agreement, flips, logit errors and gates come from dermmobile.parity (one definition
for export and bench); the confusion matrix and per-class recall from dermmobile.metrics.
This room only adds what needs both: the confusion matrices of artifact and reference
and how far they drifted apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dermmobile.metrics import confusion_matrix, per_class_recall
from dermmobile.parity import ParityReport, apply_gate, compare_logits


@dataclass
class AccuracyResult:
    parity: ParityReport
    confusion: np.ndarray  # rows: true class, columns: predicted class (NaN/Inf outputs in no column)
    per_class: np.ndarray  # recall per true class (NaN/Inf outputs count as wrong), NaN for a class without images
    drift: np.ndarray  # confusion - reference confusion
    reference_confusion: np.ndarray
    drift_l1: int  # sum of |cell changes| (NaN/Inf column included): each image that moved counts 2

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.parity.accuracy is None or self.parity.reference_accuracy is None:
            return None
        return (self.parity.reference_accuracy - self.parity.accuracy) * 100

    def to_dict(self, labels: list[str]) -> dict:
        out = self.parity.to_dict()
        out.update(
            accuracy_drop_points=self.accuracy_drop_points,
            per_class_top1={label: _finite(v) for label, v in zip(labels, self.per_class)},
            confusion=self.confusion.tolist(),
            confusion_drift=self.drift.tolist(),
            confusion_drift_l1=self.drift_l1,
        )
        return out


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def predictions(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax per row, mask of rows whose logits are all finite)."""
    logits = np.asarray(logits, dtype=np.float64)
    finite = np.isfinite(logits).all(axis=1)
    return np.where(np.isfinite(logits), logits, -np.inf).argmax(axis=1), finite


def confusion_of(logits: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x (num_classes + 1) counts; the last column holds images whose output was NaN/Inf.

    Keeping those images in their true-class row makes per-class recall count them as wrong.
    """
    predicted, finite = predictions(logits)
    answered = np.where(finite, predicted, num_classes)
    return confusion_matrix(np.asarray(targets), answered, num_classes + 1)[:num_classes]


def accuracy_parity(
    reference: np.ndarray,
    logits: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    names: list[str],
    quantization: str,
    artifact: str,
) -> AccuracyResult:
    """Compare an artifact's logits with the reference's on a labeled set and apply its gate."""
    report = apply_gate(compare_logits(reference, logits, labels, names, targets), quantization, artifact)
    n = len(labels)
    ref_full = confusion_of(reference, targets, n)
    full = confusion_of(logits, targets, n)
    drift = full - ref_full
    return AccuracyResult(report, full[:, :n], per_class_recall(full), drift[:, :n], ref_full[:, :n], int(np.abs(drift).sum()))
