"""Parity: does an artifact give the same answers as the PyTorch model it came from?

Metrics (../shared/DESIGN.md): agreement of argmax with the fp32 reference, the flips,
max/mean absolute logit error, min cosine similarity, non-finite outputs. The gates that
decide pass/fail live in one table, TOLERANCES, each with the reason for its number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    min_agreement: float  # share of images whose top-1 equals the reference's
    max_abs_logit: float | None  # None: not gated (quantized logits move by design)
    relative: bool  # max_abs_logit is a fraction of the largest reference logit (at least 1)
    max_accuracy_drop: float | None  # top-1 points lost on a labeled set, None: not gated
    why: str


TOLERANCES: dict[str, Tolerance] = {
    # Same fp32 maths in another runtime: only summation order differs, ~1e-5 on logits.
    "none": Tolerance(1.0, 1e-3, False, 0.0, "fp32 re-implementation of the same graph: only rounding order differs"),
    # fp16 rounds each value to 11 significant bits (eps ~1e-3); over ~50 layers the error
    # grows to a few 1e-3 of the logits' size, so the bound scales with the largest logit
    # (measured: 0.09 on EfficientNet-Lite0 logits of ~18, 3e-3 on a tiny CNN).
    "fp16": Tolerance(1.0, 1e-2, True, 0.0, "fp16: 1 % of the largest reference logit (11-bit mantissa over ~50 layers)"),
    # MLPerf Mobile keeps >= 98 % of fp32 quality for int8; we ask it of top-1 agreement.
    "int8-dynamic": Tolerance(0.98, None, False, 1.0, "int8 weights: MLPerf Mobile's 98 % of fp32, at most 1 point top-1 lost"),
    "int8": Tolerance(0.98, None, False, 1.0, "int8 weights and activations: MLPerf Mobile's 98 %, at most 1 point top-1 lost"),
}


@dataclass
class Flip:
    image: str
    reference: str
    artifact: str
    margin: float  # the reference's top-1 minus top-2 logit: how close the call was to begin with


@dataclass
class ParityReport:
    images: int
    agreement: float
    max_abs_logit: float
    mean_abs_logit: float
    min_cosine: float
    nonfinite: int  # artifact output rows with NaN or Inf
    reference_max_abs: float  # largest |logit| of the reference, for relative tolerances
    reference_margin_median: float  # median top-1 minus top-2 logit of the reference: flips live below it
    flips: list[Flip] = field(default_factory=list)
    accuracy: float | None = None
    reference_accuracy: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: list[str],
    names: list[str] | None = None,
    targets: np.ndarray | None = None,
) -> ParityReport:
    """Compare two N x C logit arrays; `targets` (true class indices) adds accuracy."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape}, artifact {candidate.shape}")
    n = len(reference)
    finite_rows = np.isfinite(candidate).all(axis=1)
    safe = np.where(np.isfinite(candidate), candidate, 0.0)
    ref_top = reference.argmax(axis=1)
    cand_top = np.where(finite_rows, safe.argmax(axis=1), -1)  # a NaN row never agrees
    diff = np.abs(safe - reference)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(safe, axis=1)
    cosine = np.where(norms > 0, (reference * safe).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    cosine = np.where(finite_rows, cosine, -1.0)
    names = names or [str(i) for i in range(n)]
    top_two = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((n, 2))
    margins = top_two[:, 1] - top_two[:, 0]
    # A reference whose top logits tie exactly has no single answer: the artifact agrees when it
    # picks any of the tied classes. Float references never tie; an int8 reference (a QAT
    # model's fake-quantized logits, 0.06 apart on Lite0) does, and argmax then picks by index.
    picked = np.take_along_axis(reference, np.maximum(cand_top, 0)[:, None], axis=1)[:, 0]
    agrees = (cand_top >= 0) & (picked == reference.max(axis=1)) if n else np.zeros(0, bool)
    flips = [
        Flip(names[i], labels[ref_top[i]], labels[cand_top[i]] if cand_top[i] >= 0 else "NaN/Inf", float(margins[i]))
        for i in np.flatnonzero(~agrees)
    ]
    report = ParityReport(
        images=n,
        agreement=float(agrees.mean()) if n else 0.0,
        max_abs_logit=float(diff.max()) if n else 0.0,
        mean_abs_logit=float(diff.mean()) if n else 0.0,
        min_cosine=float(cosine.min()) if n else 1.0,
        nonfinite=int((~finite_rows).sum()),
        reference_max_abs=float(np.abs(reference).max()) if n else 0.0,
        reference_margin_median=float(np.median(margins)) if n else 0.0,
        flips=flips,
    )
    if targets is not None and n:
        report.accuracy = float((cand_top == targets).mean())
        report.reference_accuracy = float((ref_top == targets).mean())
    return report


def apply_gate(report: ParityReport, quantization: str, artifact: str) -> ParityReport:
    """Fill `report.failures` with one message per broken gate, naming artifact, metric, value and threshold."""
    tol = TOLERANCES[quantization]
    failures = []
    if report.images == 0:
        failures.append(f"{artifact}: no images were checked")
    if report.nonfinite:
        failures.append(f"{artifact}: {report.nonfinite} of {report.images} outputs contain NaN or Inf")
    if report.agreement < tol.min_agreement:
        failures.append(
            f"{artifact}: top-1 agreement {report.agreement:.2%} is below the {tol.min_agreement:.0%} gate "
            f"for {quantization} ({len(report.flips)} flips)"
        )
    if tol.max_abs_logit is not None:
        bound = tol.max_abs_logit * (max(1.0, report.reference_max_abs) if tol.relative else 1.0)
        if report.max_abs_logit > bound:
            failures.append(
                f"{artifact}: max abs logit error {report.max_abs_logit:.3g} is above the {bound:.3g} gate for {quantization}"
                + (f" ({tol.max_abs_logit:g} x largest reference logit {report.reference_max_abs:.3g})" if tol.relative else "")
            )
    if tol.max_accuracy_drop is not None and report.accuracy is not None and report.reference_accuracy is not None:
        drop = (report.reference_accuracy - report.accuracy) * 100
        if drop > tol.max_accuracy_drop + 1e-9:
            failures.append(
                f"{artifact}: top-1 accuracy {report.accuracy:.2%} is {drop:.2f} points below the PyTorch "
                f"model's {report.reference_accuracy:.2%}; the gate allows {tol.max_accuracy_drop:g}"
            )
    report.failures = failures
    return report
