"""Classify image files with a checkpoint or an exported artifact, using its own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermmobile.preprocess import PreprocessSpec


@dataclass
class Predictor:
    runtime: object  # a Runtime: float32 NCHW -> logits
    labels: list[str]
    spec: PreprocessSpec
    source: str


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def load_predictor(path: Path) -> Predictor:
    """A `.safetensors` path is a checkpoint; anything else is an artifact with a manifest."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from dermmobile.checkpoint import load_checkpoint
        from dermmobile.targets.base import TorchRuntime

        checkpoint = load_checkpoint(path)
        return Predictor(TorchRuntime(checkpoint.model), list(checkpoint.meta.labels), checkpoint.meta.spec, str(path))
    from dermmobile.artifact import load_artifact
    from dermmobile.targets import get_target

    artifact = load_artifact(path)
    runtime = get_target(artifact.manifest.format).load(artifact.path, artifact.manifest)
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
        probabilities = softmax(predictor.runtime.predict(batch)[0].astype(np.float64))
        order = np.argsort(-probabilities)[: max(1, topk)]
        results.append(
            {"image": str(image), "top": [{"label": predictor.labels[i], "probability": float(probabilities[i])} for i in order]}
        )
    return results
