"""Classify image files with a checkpoint or an exported artifact, using its own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError
from dermmobile.preprocess import PreprocessSpec


@dataclass
class Predictor:
    runtime: object  # a Runtime: float32 NCHW -> logits
    labels: list[str]
    spec: PreprocessSpec
    source: str


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax of one logit vector (the Android app's Java computes the same in double)."""
    values = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise BadInputError("the runtime returned non-finite logits; the artifact is broken (NaN/Inf after quantization?)")
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def top_k(probabilities: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest, highest first; ties keep the lower index first (as the app's Postprocess.topK)."""
    return [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable")[: max(1, k)]]


def load_predictor(path: Path) -> Predictor:
    """A `.safetensors` path is a checkpoint; anything else is an artifact with a manifest."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from dermmobile.checkpoint import load_checkpoint
        from dermmobile.targets.base import TorchRuntime

        checkpoint = load_checkpoint(path)
        return Predictor(TorchRuntime(checkpoint.model), list(checkpoint.meta.labels), checkpoint.meta.spec, str(path))
    from dermmobile.artifact import load_artifact
    from dermmobile.runtime import open_runtime

    artifact = load_artifact(path)
    runtime = open_runtime(artifact)
    return Predictor(
        runtime, list(artifact.manifest.labels), PreprocessSpec.from_dict(artifact.manifest.preprocess), str(artifact.path)
    )


def predict_files(predictor: Predictor, images: list[Path], topk: int = 3) -> list[dict]:
    """One result per file: top-k labels with probabilities, or the reason it could not be read."""
    from dermmobile.errors import BadImageError

    results = []
    for image in images:
        try:
            batch = predictor.spec.load(image)[None]
        except BadImageError as exc:
            results.append({"image": str(image), "error": exc.reason})
            continue
        try:
            logits = predictor.runtime.predict(batch)[0]
        except Exception as exc:  # the load check passed, this image did not: still the file's fault, not ours
            from dermmobile.runtime import damaged

            raise damaged(Path(predictor.source), f"{type(exc).__name__}: {exc}") from None
        probabilities = softmax(logits)
        top = [{"label": predictor.labels[i], "probability": float(probabilities[i])} for i in top_k(probabilities, topk)]
        results.append({"image": str(image), "top": top})
    return results
