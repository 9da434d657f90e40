"""Classification metrics and their plots: accuracy, per-class recall, confusion matrices.

Rows of a confusion matrix are the true class, columns the predicted class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Share of each true class predicted correctly; NaN for a class with no images."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)


def per_class_precision(matrix: np.ndarray) -> np.ndarray:
    predicted = matrix.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(predicted > 0, np.diag(matrix) / np.maximum(predicted, 1), np.nan)


def markdown_confusion(matrix: np.ndarray, labels: list[str]) -> str:
    """The confusion matrix as a Markdown table (the paper's Table 4 form), recall in the last column."""
    from dermmobile.tables import markdown_table

    recall = per_class_recall(matrix)
    rows = [[label, *matrix[i].tolist(), "" if np.isnan(recall[i]) else f"{recall[i]:.0%}"] for i, label in enumerate(labels)]
    return markdown_table(rows, ["true \\ predicted", *(label[:12] for label in labels), "recall"])


def plot_confusions(matrices: list[np.ndarray], titles: list[str], labels: list[str], path: Path, suptitle: str = "") -> Path:
    """One or more confusion matrices side by side, row-normalized colours, counts written in.

    Labels are drawn as plain text (a `$` in a class name is not mathtext); the PNG is written atomically.
    """
    from dermmobile.display import figure_png, pyplot
    from dermmobile.fsutil import atomic_write_bytes

    plt = pyplot()
    n = len(matrices)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    for ax, matrix, title in zip(axes[0], matrices, titles):
        norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{title}\nacc {accuracy(matrix):.1%}", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(labels) <= 30:
            for (i, j), value in np.ndenumerate(matrix):
                if value:
                    ax.text(
                        j, i, str(value), ha="center", va="center", fontsize=5, color="white" if norm[i, j] > 0.5 else "black"
                    )
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    try:
        png = figure_png(fig)
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), png)
    return Path(path)
