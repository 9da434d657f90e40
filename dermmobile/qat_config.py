"""`dermmobile qat` options: the dataclass that is both the Python API and the CLI's defaults.

This module imports nothing heavy: `dermmobile --help` reads it (dermmobile/qat.py does the work).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from dermmobile.errors import BadInputError

LOSSES = ("distill", "labels")  # QatConfig.loss


@dataclass
class QatConfig:
    """One `dermmobile qat` run: which checkpoint, for which target's int8, and the QAT schedule."""

    checkpoint: Path  # the fine-tuned float checkpoint to start from
    target: str  # tflite | executorch: whose int8 quantizer to train with
    out: Path
    data: Path | None = None  # default: the data root the checkpoint records
    # The schedule measured on the reference Lite0 (README "Quantization-aware training"): a converged model needs
    # little movement, so a low lr; batch norm keeps the float run's statistics (the int8 file folds them).
    epochs: int = 2
    lr: float = 1e-4  # peak; cosine to 0 over the epochs
    freeze_bn_after: int = 0  # epochs that still update BatchNorm statistics
    freeze_observers_after: int = 1  # epochs whose batches still move the int8 ranges
    device: str = "cpu"
    workers: int = 0  # threads that decode images; 0 = one per core
    threads: int = 0  # torch CPU threads; 0 = every core
    seed: int = 0
    progress: bool = True
    # The logits layer trains and exports in float, as in every post-training int8 file (quantization/options.py:
    # int8 logits sit on a grid where near-ties round to equal values). It did not bring the TFLite file closer to
    # its fake-quant model: 5 flips of 143 with int8 logits (lr 1e-3, 1 epoch), 5 with float logits (lr 1e-4, 2).
    float_logits: bool = True
    # What the QAT epochs fit: "distill" the float checkpoint's logits on each augmented batch, or the "labels".
    # QAT exists to make int8 agree with the float model; fitting the labels again moved a converged Lite0 away from
    # it: with this schedule the fake-quant model agreed with the float one on 84.6 % of the 143 held-out photos
    # (distilled: 90.9 %), and at lr 1e-3 it lost 5.6 points of top-1 in one epoch.
    loss: str = "distill"

    def check(self) -> None:
        if self.epochs < 1:
            raise BadInputError(f"--epochs must be at least 1, got {self.epochs}")
        if self.freeze_bn_after < 0 or self.freeze_observers_after < 1:
            raise BadInputError(
                "--freeze-bn-after must be 0 or more and --freeze-observers-after 1 or more (epochs), "
                f"got {self.freeze_bn_after} and {self.freeze_observers_after}"
            )
        if self.lr <= 0:
            raise BadInputError(f"--lr must be above 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise BadInputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        from dermmobile.qat import qat_quantizer  # torch and the target's quantizer: only when a run starts

        qat_quantizer(self.target)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def cli_defaults() -> dict:
    """{field name: default} of every QatConfig field that has one (the CLI's defaults and help texts)."""
    return {f.name: f.default for f in fields(QatConfig) if f.default is not MISSING}
