"""A training run's folder and the state that survives a restart.

`best.safetensors` (the checkpoint export and bench read), `last.pt` (everything --resume
needs: tensors and primitives only, read with weights_only=True), `log.jsonl` (one record
per epoch), `metrics.json` and the confusion-matrix reports. Checkpoints are replaced
atomically, so Ctrl-C or SIGTERM leaves the last good ones whole.

`last.pt` is untrusted input like any checkpoint: before anything is loaded from it, its
structure, types, tensor names and shapes are checked against the model and optimiser
being resumed, and a file that does not fit is refused with exit 2, never a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from dermmobile.checkpoint import CheckpointMeta, save_checkpoint
from dermmobile.errors import BadInputError
from dermmobile.fsutil import append_text, atomic_path, atomic_write_json, atomic_write_text

LAST_FORMAT = "dermmobile-train-state-v2"
LAST_KEYS = {"format", "fingerprint", "state", "model", "optimizer", "scaler", "torch_rng"}


@dataclass
class TrainState:
    """Where a run stands after its last finished epoch (early stopping and throughput included)."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # summed over finished epochs, across restarts
    train_images: int = 0

    def record(self, epoch: int, val_loss: float, patience: int) -> bool:
        """Note a finished epoch; True when its validation loss is the best so far."""
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
            self.stopped_early = self.bad_epochs >= patience
        self.epoch = epoch
        return improved

    @classmethod
    def from_dict(cls, raw, where: str) -> TrainState:
        if not isinstance(raw, dict) or set(raw) != {f.name for f in fields(cls)}:
            keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise _refused(where, f"its state must have the keys {sorted(f.name for f in fields(cls))}, found {keys}")
        for f in fields(cls):
            value = raw[f.name]
            kind = {"int": int, "float": (int, float), "bool": bool}[f.type]
            if not isinstance(value, kind) or (f.type == "int" and isinstance(value, bool)):
                raise _refused(where, f"state {f.name} must be {f.type}, found {value!r}")
            if f.type != "bool" and (value != value or value < 0):  # NaN or negative
                raise _refused(where, f"state {f.name} must be a number >= 0, found {value!r}")
        state = cls(**raw)
        if state.best_epoch > state.epoch or state.epoch < 1 or state.best_epoch < 1:
            raise _refused(where, f"state says epoch {state.epoch} with best epoch {state.best_epoch}")
        return state


def _refused(where: str, problem: str) -> BadInputError:
    return BadInputError(
        f"{where} cannot be resumed: {problem}. It was not written by this dermmobile version or is damaged; "
        "delete it to start the run over, or train into a new --out"
    )


def check_tensors(found, expected: dict[str, torch.Tensor], where: str, what: str) -> None:
    """Refuse unless `found` maps exactly the names of `expected` to tensors of the same shape and dtype."""
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in found.items()):
        raise _refused(where, f"{what} must map names to tensors, found {type(found).__name__}")
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise _refused(where, f"{what} tensors differ from the model's (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape or found[name].dtype != tensor.dtype:
            raise _refused(where, f"{what} tensor {name} is {found[name].dtype} {tuple(found[name].shape)}, "
                                  f"the model has {tensor.dtype} {tuple(tensor.shape)}")  # fmt: skip


def _check_primitives(found, expected: dict, where: str, what: str) -> None:
    """Same keys as `expected`, each a number, bool or None like the expected value."""
    if not isinstance(found, dict) or set(found) != set(expected):
        raise _refused(where, f"{what} must have the keys {sorted(expected)}")
    for key, value in expected.items():
        allowed = (bool,) if isinstance(value, bool) else (int, float) if isinstance(value, int | float) else (type(value),)
        if not isinstance(found[key], allowed) or (isinstance(found[key], bool) and not isinstance(value, bool)):
            raise _refused(where, f"{what} {key} must be {type(value).__name__}, found {found[key]!r}")


def check_optimizer_state(found, optimizer: torch.optim.Optimizer, where: str) -> None:
    """Refuse an optimiser state whose groups, parameters or buffers do not fit `optimizer`."""
    reference = optimizer.state_dict()
    if not isinstance(found, dict) or set(found) != {"state", "param_groups"}:
        raise _refused(where, "its optimizer state must have the keys 'state' and 'param_groups'")
    groups = found["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(reference["param_groups"]):
        raise _refused(where, f"its optimizer must have {len(reference['param_groups'])} parameter group(s)")
    for group, expected in zip(groups, reference["param_groups"]):
        if not isinstance(group, dict) or group.get("params") != expected["params"]:
            raise _refused(where, "its optimizer parameter groups list other parameters than the model's")
        _check_primitives({k: v for k, v in group.items() if k != "params"},
                          {k: v for k, v in expected.items() if k != "params"}, where, "optimizer setting")  # fmt: skip
    shapes = {i: p.shape for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    if not isinstance(found["state"], dict) or not set(found["state"]) <= set(shapes):
        raise _refused(where, "its optimizer state names parameters the model does not have")
    for index, buffers in found["state"].items():
        if not isinstance(buffers, dict) or not all(isinstance(k, str) for k in buffers):
            raise _refused(where, f"optimizer state of parameter {index} must map names to tensors")
        for name, value in buffers.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1 and value.shape != shapes[index]:
                raise _refused(where, f"optimizer {name} of parameter {index} is {tuple(value.shape)}, "
                                      f"the parameter is {tuple(shapes[index])}")  # fmt: skip
            if not isinstance(value, torch.Tensor | int | float) and value is not None:
                raise _refused(where, f"optimizer {name} of parameter {index} is a {type(value).__name__}")


class RunFolder:
    """The files of one run (one split, or one fold). Only the writer (rank 0) writes."""

    def __init__(self, path: Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.best = self.path / "best.safetensors"
        self.last = self.path / "last.pt"
        self.log = self.path / "log.jsonl"

    def has_run(self, resume: bool) -> bool:
        """True when there is a run to resume; refuses to start over an existing one without --resume."""
        if self.path.exists() and not self.path.is_dir():
            raise BadInputError(f"--out {self.path} is a file, not a folder; choose a folder for the run")
        if self.last.exists() and not resume:
            raise BadInputError(
                f"{self.path} already holds a training run (last.pt); pass --resume to continue it, or choose another --out"
            )
        return resume and self.last.exists()

    def append_log(self, record: dict) -> None:
        if self.writer:
            append_text(self.log, json.dumps(record) + "\n")  # never through a planted link

    def save_best(self, model: torch.nn.Module, meta: CheckpointMeta) -> None:
        if self.writer:
            save_checkpoint(self.best, model, meta)

    def write_metrics(self, metrics: dict) -> None:
        if self.writer:
            atomic_write_json(self.path / "metrics.json", metrics)

    def save_last(self, fingerprint: dict, state: TrainState, model, optimizer, scaler) -> None:
        if not self.writer:
            return
        payload = {
            "format": LAST_FORMAT,
            "fingerprint": fingerprint,
            "state": asdict(state),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            # Shuffling and augmentation are re-seeded from (seed, epoch, batch); this is torch's
            # global generator (dropout draws are re-seeded per epoch too), kept for anything else.
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.last) as tmp:
            torch.save(payload, tmp)

    def load_last(self, fingerprint: dict, model, optimizer, scaler) -> TrainState:
        """Validate last.pt against this run and load it into model, optimizer and scaler."""
        where = str(self.last)
        try:
            payload = torch.load(self.last, map_location="cpu", weights_only=True)
        except Exception as exc:  # anything torch.load raises means "not a state we can read"
            raise _refused(where, f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(payload, dict) or set(payload) != LAST_KEYS or payload["format"] != LAST_FORMAT:
            found = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
            raise _refused(where, f"expected a {LAST_FORMAT} dict with the keys {sorted(LAST_KEYS)}, found {found}")
        _check_fingerprint(payload["fingerprint"], fingerprint, self.path)
        state = TrainState.from_dict(payload["state"], where)
        check_tensors(payload["model"], model.state_dict(), where, "model")
        check_optimizer_state(payload["optimizer"], optimizer, where)
        _check_primitives(payload["scaler"], scaler.state_dict(), where, "grad scaler")
        rng = payload["torch_rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise _refused(where, "its torch_rng is not a generator state")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(rng)
        self._drop_log_after(state.epoch)
        return state

    def load_best_weights(self, model) -> dict[str, torch.Tensor]:
        """The weights of best.safetensors, checked against the model, for a resumed run."""
        from safetensors.torch import load_file

        try:
            weights = load_file(str(self.best))
        except Exception as exc:
            raise _refused(str(self.best), f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
        check_tensors(weights, {k: v.cpu() for k, v in model.state_dict().items()}, str(self.best), "best checkpoint")
        return weights

    def _drop_log_after(self, epoch: int) -> None:
        """Drop log lines of an epoch that ran after last.pt was written, so none is logged twice."""
        if not self.log.exists() or not self.writer:
            return
        kept = []
        for number, line in enumerate(self.log.read_text().splitlines(), 1):
            try:
                record = json.loads(line) if line else {}
            except ValueError:
                raise _refused(str(self.log), f"line {number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("epoch", 0), int):
                raise _refused(str(self.log), f"line {number} is not an epoch record")
            if line and record.get("epoch", 0) <= epoch:
                kept.append(line + "\n")
        atomic_write_text(self.log, "".join(kept))


def _check_fingerprint(found, expected: dict, folder: Path) -> None:
    if not isinstance(found, dict):
        raise _refused(str(folder / "last.pt"), "its fingerprint is not a dict")
    diff = {k: (v, found.get(k)) for k, v in expected.items() if found.get(k) != v}
    if diff:
        detail = "; ".join(f"{k}: run has {old!r}, now {new!r}" for k, (new, old) in list(diff.items())[:4])
        raise BadInputError(
            f"--resume: {folder} was started with different settings or data ({detail}). "
            "Resume with the original settings, or train into a new --out"
        )
