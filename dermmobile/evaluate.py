"""Accuracy of a checkpoint on labelled images, in the founding paper's table forms.

Table 3 form: overall top-1 accuracy with the per-class accuracy (recall), precision and
support; Table 4 form: the confusion matrix (rows true, columns predicted). Each report
is written as Markdown, JSON and PNG. The trainer uses the same functions for its
validation and test reports, so a number printed at training time and one printed by
`dermmobile evaluate` come from one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError
from dermmobile.metrics import (
    accuracy,
    confusion_matrix,
    markdown_confusion,
    per_class_precision,
    per_class_recall,
    plot_confusions,
)
from dermmobile.tables import markdown_table


def predict_logits(model, arrays: np.ndarray, device="cpu", batch_size: int = 64, amp_dtype=None) -> np.ndarray:
    """float32 N x 3 x H x W -> float32 N x classes logits, the model in eval mode."""
    import torch

    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(arrays), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(arrays[start : start + batch_size]))
                if device.type == "cuda":
                    batch = batch.pin_memory()
                batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs.append(model(batch).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return torch.cat(outputs).numpy()


def class_table(matrix: np.ndarray, labels: list[str]) -> list[dict]:
    recall = per_class_recall(matrix)
    precision = per_class_precision(matrix)
    return [
        {
            "class": label,
            "support": int(matrix[i].sum()),
            "correct": int(matrix[i, i]),
            "recall": None if np.isnan(recall[i]) else float(recall[i]),
            "precision": None if np.isnan(precision[i]) else float(precision[i]),
        }
        for i, label in enumerate(labels)
    ]


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def report_markdown(title: str, matrix: np.ndarray, labels: list[str], facts: dict) -> str:
    """Table 3 form (overall and per-class accuracy) and Table 4 form (confusion matrix)."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    lines += ["", f"**Top-1 accuracy: {accuracy(matrix):.1%}** ({int(np.trace(matrix))} of {int(matrix.sum())} images)", ""]
    rows = [[row["class"], row["support"], row["correct"], _pct(row["recall"]), _pct(row["precision"])]
            for row in class_table(matrix, labels)]  # fmt: skip
    lines += ["## Per-class accuracy (Table 3 form)", ""]
    lines += [markdown_table(rows, ["class", "images", "correct", "accuracy (recall)", "precision"])]
    lines += ["", "## Confusion matrix (Table 4 form; rows true, columns predicted)", "", markdown_confusion(matrix, labels), ""]
    return "\n".join(lines)


def write_report(out_dir: Path, stem: str, matrix: np.ndarray, labels: list[str], title: str, facts: dict) -> dict:
    """Write `<stem>.md`, `<stem>.json` and `<stem>.png`; returns the JSON record."""
    from dermmobile.display import printable
    from dermmobile.fsutil import atomic_write_json, atomic_write_text, ensure_output_dir

    out_dir = ensure_output_dir(Path(out_dir))
    record = {
        **facts,
        "accuracy": accuracy(matrix),
        "images": int(matrix.sum()),
        "per_class": class_table(matrix, labels),
        "labels": labels,
        "confusion_matrix": matrix.tolist(),
    }
    atomic_write_text(out_dir / f"{stem}.md", printable(report_markdown(title, matrix, labels, facts)))
    atomic_write_json(out_dir / f"{stem}.json", record)
    plot_confusions([matrix], [title], labels, out_dir / f"{stem}.png")
    return record


@dataclass
class EvalResult:
    checkpoint: Path
    data: Path
    split: str  # "test" (the split recorded in the checkpoint) or "all"
    labels: list[str]
    matrix: np.ndarray
    names: list[str]
    predictions: list[int]
    bad: list[tuple[str, str]] = field(default_factory=list)
    files: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)

    def facts(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "data": str(self.data),
            "split": self.split,
            "unreadable images": len(self.bad),
        }

    def to_dict(self) -> dict:
        return {
            **self.facts(),
            "accuracy": self.accuracy,
            "images": int(self.matrix.sum()),
            "per_class": class_table(self.matrix, self.labels),
            "labels": self.labels,
            "confusion_matrix": self.matrix.tolist(),
            "bad_images": [{"path": p, "reason": r} for p, r in self.bad],
            "files": self.files,
        }

    def markdown(self) -> str:
        return report_markdown(f"{Path(self.checkpoint).name} on {self.split} images", self.matrix, self.labels, self.facts())


def evaluate_checkpoint(checkpoint: Path, data_dir: Path, split: str = "auto", out: Path | None = None, device: str = "cpu",
             batch_size: int = 32, progress: str | None = None) -> EvalResult:  # fmt: skip
    """Accuracy of `checkpoint` on `data_dir`.

    split "auto": the held-out test split recorded in the checkpoint when `data_dir` is its
    training folder, otherwise every image. "test" insists on the recorded split; "all"
    uses every image even of the training folder (then training images inflate the score).
    With `out`, writes evaluation.md/.json/.png there.
    """
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.data import check_same_classes, held_out, load_images, scan_image_folder

    ckpt = load_checkpoint(Path(checkpoint))
    folder = scan_image_folder(Path(data_dir))
    check_same_classes(ckpt.meta.labels, folder.classes, f"checkpoint {Path(checkpoint).name}", str(data_dir))
    chosen = held_out(folder, ckpt.meta.data, split)
    images = load_images(chosen.samples, ckpt.meta.spec, folder.root, progress=progress)
    if not len(images):
        raise BadInputError(f"no readable images to evaluate in {data_dir} ({len(images.bad)} unreadable)")
    logits = predict_logits(ckpt.model.to(device), images.arrays, device=device, batch_size=batch_size)
    predictions = logits.argmax(axis=1)
    matrix = confusion_matrix(images.targets, predictions, len(ckpt.meta.labels))
    result = EvalResult(Path(checkpoint), Path(data_dir), chosen.split, list(ckpt.meta.labels), matrix, images.names,
                        [int(p) for p in predictions], images.bad)  # fmt: skip
    if out is not None:
        title = f"{ckpt.meta.arch} on {chosen.split} images of {Path(data_dir).name}"
        write_report(Path(out), "evaluation", matrix, result.labels, title, result.facts())
        result.files = {ext: str(Path(out) / f"evaluation.{ext}") for ext in ("md", "json", "png")}
    return result
