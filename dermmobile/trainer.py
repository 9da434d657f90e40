"""Fine-tuning: the founding paper's protocol (batch 16, SGD lr 1e-3 momentum 0.9, lr decay,
early stopping on validation loss, k-fold), made fast and restartable.

- Every image is decoded once, up front. Training keeps a uint8 copy whose shorter side
  is the spec's resize and augments it in memory; validation and test use the one
  preprocessing spec (`PreprocessSpec.array`) on the full decoded image, exactly what an
  exported artifact sees. Unreadable files are skipped and listed in the run's outputs.
- Deterministic from --seed: the model init, the shuffling (DistributedSampler's seeded
  order, with one replica when not distributed) and every augmentation draw (a generator
  per seed, epoch and image) are functions of the seed and the epoch only. That is also
  why a resumed run gives the same weights as an uninterrupted one.
- A run directory holds `best.safetensors` (the checkpoint export and bench read),
  `last.pt` (tensors and primitives only, read with weights_only=True), `log.jsonl`,
  `metrics.json` and the confusion-matrix reports. Both checkpoints are replaced
  atomically, so Ctrl-C or SIGTERM leaves the last good ones whole.
- Multi-GPU through torchrun: one process per device, DistributedDataParallel, rank 0
  writes. Every rank validates on the whole (small) validation set with the same
  weights, so early-stopping decisions agree without extra messages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermmobile.augment import AugmentConfig, augment, downscale
from dermmobile.checkpoint import CheckpointMeta, save_checkpoint
from dermmobile.data import ImageFolder, decode_image, files_digest, kfold_indices, scan_image_folder, stratified_split
from dermmobile.errors import BadImageError, BadInputError, DermmobileError
from dermmobile.evaluate import predict_logits, write_report
from dermmobile.fsutil import append_text, atomic_path, atomic_write_json, atomic_write_text
from dermmobile.metrics import accuracy, confusion_matrix, per_class_recall
from dermmobile.models import build_model, get_head, model_info
from dermmobile.preprocess import PreprocessSpec
from dermmobile.progress import progress_bar

DEVICES = ("auto", "cuda", "mps", "cpu")
LR_DECAYS = ("step", "cosine", "none")
BALANCING = ("loss", "none")
LAST_FORMAT = "dermmobile-train-state-v1"


@dataclass
class TrainConfig:
    data: Path
    arch: str
    out: Path
    weights: str = "none"  # none | DEFAULT | path to a state dict
    freeze_backbone: bool = False
    epochs: int = 30
    batch_size: int = 16  # per process under torchrun, as in torchvision's references
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay: str = "step"
    lr_step: int = 7  # step decay: multiply by lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    patience: int = 5  # epochs without a lower validation loss before stopping
    folds: int = 0  # 0: one train/val/test split; K >= 2: K-fold on the non-test part
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA; bf16 where supported, else fp16 with a GradScaler
    workers: int = 0  # threads decoding and augmenting; 0 = one per core
    threads: int = 0  # torch CPU threads; 0 = every core (shared between the processes of a CPU torchrun job)
    seed: int = 0
    resume: bool = False
    balance: str = "loss"  # class-weighted loss (inverse frequency) or none
    spec: PreprocessSpec = field(default_factory=PreprocessSpec)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True
    # Called on every rank after each epoch's files are written, with the log record. Lets the
    # demo report progress and tests interrupt a run at a known point; never stored.
    on_epoch_end: Callable[[dict], None] | None = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        choices = {"device": (self.device, DEVICES), "lr_decay": (self.lr_decay, LR_DECAYS), "balance": (self.balance, BALANCING)}
        for name, (value, valid) in choices.items():
            if value not in valid:
                raise BadInputError(f"--{name.replace('_', '-')} {value!r} is not valid; choose one of {', '.join(valid)}")
        model_info(self.arch)
        if self.threads < 0 or self.workers < 0:
            raise BadInputError(f"--threads and --workers must be 0 (automatic) or more, got {self.threads}, {self.workers}")
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "patience": self.patience, "lr-step": self.lr_step}
        for name, value in positive.items():
            if value < 1:
                raise BadInputError(f"--{name} must be at least 1, got {value}")
        if self.lr < 0 or not 0 <= self.momentum < 1:
            raise BadInputError(f"--lr must be >= 0 and --momentum in [0, 1); got {self.lr}, {self.momentum}")
        if self.folds == 1 or self.folds < 0:
            raise BadInputError(f"--folds must be 0 (one split) or 2 or more, got {self.folds}")

    def to_dict(self) -> dict:
        """The arguments that made a checkpoint, JSON-safe (stored in its metadata)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("on_epoch_end", "spec", "augment")}
        out["data"] = str(self.data)
        out["out"] = str(self.out)
        out["weights"] = str(self.weights)
        out["spec"] = self.spec.to_dict()
        out["augment"] = self.augment.to_dict()
        return out


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path | None  # best.safetensors (for k-fold: the fold with the best validation accuracy)
    metrics: dict
    bad_images: list[tuple[str, str]]
    model: nn.Module | None = None  # best weights, in eval mode, on the CPU


# -- processes and devices --------------------------------------------------------------


@dataclass
class Dist:
    """Where this process sits in a torchrun job (world 1 when run directly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_device(name: str, dist: Dist, threads: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError("--device cuda but no CUDA GPU is visible to torch; use --device cpu or auto")
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if name == "mps" and not torch.backends.mps.is_available():
        raise BadInputError("--device mps but Metal is not available; use --device cpu or auto")
    if name == "cpu":
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", dist.world)))
        torch.set_num_threads(threads or max(1, _cores() // local))
    return torch.device(name)


def amp_dtype(device: torch.device, amp: bool | None):
    if amp is False or (amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16  # CPU autocast: only worth it on CPUs with bf16 units, hence off unless asked


# -- data -------------------------------------------------------------------------------


@dataclass
class Decoded:
    """Images decoded once: uint8 training copies and spec-preprocessed evaluation arrays."""

    train: dict[int, np.ndarray]
    eval: dict[int, np.ndarray]
    bad: dict[int, str]
    seconds: float


@contextlib.contextmanager
def _pool(threads: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that drops its queued work on the way out, so Ctrl-C does not wait for it."""
    pool = ThreadPoolExecutor(threads)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_all(folder: ImageFolder, train_idx: set[int], eval_idx: set[int], spec: PreprocessSpec,
               workers: int, desc: str | None) -> Decoded:  # fmt: skip
    def one(index: int):
        try:
            image = decode_image(folder.samples[index].path)
        except BadImageError as exc:
            return index, None, None, exc.reason
        rgb = np.asarray(image)
        small = downscale(image, spec.resize) if index in train_idx else None
        full = spec.array(rgb) if index in eval_idx else None
        return index, small, full, None

    start = time.perf_counter()
    wanted = sorted(train_idx | eval_idx)
    decoded = Decoded({}, {}, {}, 0.0)
    with _pool(workers) as pool:
        for index, small, full, reason in progress_bar(pool.map(one, wanted), desc=desc, total=len(wanted), unit="img"):
            if reason is not None:
                decoded.bad[index] = reason
                continue
            if small is not None:
                decoded.train[index] = small
            if full is not None:
                decoded.eval[index] = full
    decoded.seconds = time.perf_counter() - start
    return decoded


def _relative(folder: ImageFolder, index: int) -> str:
    return folder.samples[index].path.relative_to(folder.root).as_posix()


# -- one training run -----------------------------------------------------------------------


@dataclass
class Part:
    """The sample indices of one run (one split, or one fold) after unreadable files are dropped."""

    train: list[int]
    val: list[int]
    test: list[int]
    fold: int | None = None


class Run:
    def __init__(self, config: TrainConfig, folder: ImageFolder, decoded: Decoded, part: Part, out: Path,
                 device: torch.device, dist: Dist, data_record: dict):  # fmt: skip
        self.config, self.folder, self.decoded, self.part = config, folder, decoded, part
        self.out, self.device, self.dist = out, device, dist
        self.labels = folder.classes
        val_files = [_relative(folder, i) for i in part.val]  # which images chose the best epoch (per fold)
        self.data_record = {**data_record, "fold": part.fold, "val_files": val_files,
                            "split_sizes": {"train": len(part.train), "val": len(part.val), "test": len(part.test)}}  # fmt: skip
        self.amp = amp_dtype(device, config.amp)
        self.verbose = config.progress and dist.main

    # The fields that must match for --resume to continue a run rather than start a different one.
    def fingerprint(self) -> dict:
        c = self.config
        keys = ("arch", "weights", "freeze_backbone", "batch_size", "lr", "momentum", "weight_decay", "lr_decay",
                "lr_step", "lr_gamma", "seed", "balance", "val_fraction", "test_fraction", "folds")  # fmt: skip
        found = {k: str(getattr(c, k)) for k in keys}
        found.update(spec=json.dumps(c.spec.to_dict()), files_sha256=self.data_record["files_sha256"])
        found.update(fold=str(self.part.fold), world=str(self.dist.world))
        return found

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def build(self):
        c = self.config
        torch.manual_seed(c.seed)
        model = build_model(c.arch, len(self.labels), c.weights, freeze_backbone=c.freeze_backbone)
        self.head = get_head(model, model_info(c.arch))
        self.model = model.to(self.device, memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        if c.lr_decay == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, c.lr_step, c.lr_gamma)
        elif c.lr_decay == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda epoch: 1.0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        counts = np.bincount([self.folder.samples[i].label for i in self.part.train], minlength=len(self.labels))
        weights = None
        if c.balance == "loss":
            # Inverse class frequency, scaled so a balanced set gets weight 1 everywhere.
            weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
        self.criterion = nn.CrossEntropyLoss(weight=weights).to(self.device)
        self.train_model = model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
                      "stopped_early": False, "finished": False}  # fmt: skip
        self.best_state: dict | None = None

    def set_train_mode(self) -> None:
        self.model.train()
        if self.config.freeze_backbone:
            # A frozen backbone runs as in inference: BatchNorm keeps its ImageNet statistics and
            # dropout is off, so only the head learns, and no backward pass enters the backbone.
            self.model.eval()
            self.head.train()

    # -- files --------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.safetensors"

    def save_last(self) -> None:
        payload = {
            "format": LAST_FORMAT,
            "fingerprint": self.fingerprint(),
            "state": dict(self.state),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            # Shuffling and augmentation are re-seeded from (seed, epoch) each epoch; this is
            # torch's global generator, kept so anything else drawing from it also resumes.
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.last_path) as tmp:
            torch.save(payload, tmp)

    def try_resume(self) -> bool:
        if not self.config.resume or not self.last_path.exists():
            if self.last_path.exists():
                raise BadInputError(
                    f"{self.out} already holds a training run (last.pt); pass --resume to continue it, or choose another --out"
                )
            if self.config.resume:
                self.log(f"nothing to resume in {self.out}: starting a new run")
            return False
        try:
            payload = torch.load(self.last_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInputError(
                f"{self.last_path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over"
            ) from None
        if payload.get("format") != LAST_FORMAT:
            raise BadInputError(f"{self.last_path} is not a dermmobile training state ({LAST_FORMAT})")
        diff = {
            k: (v, payload["fingerprint"].get(k)) for k, v in self.fingerprint().items() if payload["fingerprint"].get(k) != v
        }
        if diff:
            detail = "; ".join(f"{k}: run has {old!r}, now {new!r}" for k, (new, old) in list(diff.items())[:4])
            raise BadInputError(
                f"--resume: {self.out} was started with different settings or data ({detail}). "
                "Resume with the original settings, or train into a new --out"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["torch_rng"])
        self.state = payload["state"]
        if self.best_path.exists():
            from safetensors.torch import load_file

            self.best_state = load_file(str(self.best_path))
        # Drop log lines of an epoch that ran after last.pt was written, so it is not logged twice.
        log = self.out / "log.jsonl"
        if log.exists():
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["epoch"] <= self.state["epoch"]]
            atomic_write_text(log, "".join(line + "\n" for line in kept))
        self.log(f"resuming {self.out} after epoch {self.state['epoch']}")
        return True

    def meta(self, metrics: dict) -> CheckpointMeta:
        return CheckpointMeta(self.config.arch, list(self.labels), self.config.spec.to_dict(),
                              args=self.config.to_dict(), metrics=metrics, data=self.data_record)  # fmt: skip

    # -- epochs ---------------------------------------------------------------------------
    def batch(self, indices: list[int], epoch: int, pool: ThreadPoolExecutor):
        c = self.config
        positions = [self.part.train[i] for i in indices]

        def one(index: int) -> np.ndarray:
            rng = np.random.default_rng([c.seed, epoch, index])
            return augment(self.decoded.train[index], c.spec, rng, c.augment)

        x = torch.from_numpy(np.stack(list(pool.map(one, positions))))
        y = torch.tensor([self.folder.samples[i].label for i in positions], dtype=torch.int64)
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def train_epoch(self, epoch: int, pool: ThreadPoolExecutor, loader: ThreadPoolExecutor) -> dict:
        c = self.config
        sampler = torch.utils.data.DistributedSampler(range(len(self.part.train)), num_replicas=self.dist.world,
                                                      rank=self.dist.rank, shuffle=True, seed=c.seed)  # fmt: skip
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i : i + c.batch_size] for i in range(0, len(order), c.batch_size)]
        torch.manual_seed(c.seed * 100_003 + epoch)  # dropout draws: a function of the epoch, for resume
        self.set_train_mode()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
        start = time.perf_counter()
        upcoming = loader.submit(self.batch, batches[0], epoch, pool)
        desc = f"epoch {epoch}/{c.epochs}" if self.verbose else None
        for step in progress_bar(range(len(batches)), desc=desc, unit="batch"):
            x, y = upcoming.result()
            if step + 1 < len(batches):  # build the next batch while this one trains
                upcoming = loader.submit(self.batch, batches[step + 1], epoch, pool)
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.train_model(x)
                loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            totals += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
        seconds = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.dist.world > 1:
            torch.distributed.all_reduce(totals)
            # DDP broadcasts buffers at each forward, then every rank updates its BatchNorm
            # statistics from its own batch: re-align them so all ranks validate (and stop) alike.
            for buffer in self.model.buffers():
                synced = buffer.detach().to(self.device)
                torch.distributed.broadcast(synced, 0)
                buffer.copy_(synced)
        images = int(totals[2])
        return {"train_loss": float(totals[0] / images), "train_acc": float(totals[1] / images), "lr": lr,
                "time_s": round(seconds, 3), "img_per_s": round(images / seconds, 2)}  # fmt: skip

    def score(self, indices: list[int]) -> tuple[float, np.ndarray]:
        """(loss with the training criterion, confusion matrix) of the current weights on `indices`."""
        arrays = np.stack([self.decoded.eval[i] for i in indices])
        targets = np.asarray([self.folder.samples[i].label for i in indices])
        logits = predict_logits(self.model, arrays, self.device, batch_size=max(32, self.config.batch_size), amp_dtype=self.amp)
        weight = None if self.criterion.weight is None else self.criterion.weight.cpu()
        loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), weight=weight).item()
        return loss, confusion_matrix(targets, logits.argmax(1), len(self.labels))

    def fit(self) -> TrainResult:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        self.build()
        self.try_resume()
        started = time.perf_counter()
        threads = c.workers or _cores()
        with _pool(threads) as pool, _pool(1) as loader:
            while not self.state["finished"]:
                epoch = self.state["epoch"] + 1
                if epoch > c.epochs or self.state["stopped_early"]:
                    self.state["finished"] = True
                    break
                record = {"epoch": epoch, **self.train_epoch(epoch, pool, loader)}
                val_loss, val_matrix = self.score(self.part.val)
                record.update(val_loss=val_loss, val_acc=accuracy(val_matrix))
                improved = val_loss < self.state["best_val_loss"]
                record["best"] = improved
                if improved:
                    self.state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0)
                    self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                else:
                    self.state["bad_epochs"] += 1
                    self.state["stopped_early"] = self.state["bad_epochs"] >= c.patience
                self.state["epoch"] = epoch
                self.state["finished"] = epoch >= c.epochs or self.state["stopped_early"]
                if self.dist.main:
                    if improved:
                        best = {"epoch": epoch, "val_loss": val_loss, "val_acc": accuracy(val_matrix)}
                        save_checkpoint(self.best_path, self.model, self.meta({"best": best}))
                    append_text(self.out / "log.jsonl", json.dumps(record) + "\n")  # never through a planted link
                    self.save_last()  # last: a crash between the two files repeats one epoch, loses none
                self.dist.barrier()
                self.log(
                    f"epoch {epoch}: train loss {record['train_loss']:.3f} acc {record['train_acc']:.1%} | val loss "
                    f"{val_loss:.3f} acc {record['val_acc']:.1%} | lr {record['lr']:.2g} | {record['img_per_s']:.1f} img/s"
                    + (" *" if improved else "")
                )
                if c.on_epoch_end is not None:
                    c.on_epoch_end(record)
        if self.state["stopped_early"]:
            self.log(f"early stop: validation loss has not improved for {c.patience} epochs")
        return self.finish(time.perf_counter() - started)

    def finish(self, seconds: float) -> TrainResult:
        """Reload the best weights, score them on validation and test, write the reports."""
        if self.best_state is None:
            raise DermmobileError(f"{self.out}: no epoch finished, so there is no best checkpoint")
        self.model.load_state_dict(self.best_state)
        log = [json.loads(line) for line in (self.out / "log.jsonl").read_text().splitlines() if line] if self.dist.main else []
        train_seconds = sum(r["time_s"] for r in log)
        train_images = sum(r["img_per_s"] * r["time_s"] for r in log)
        val_loss, val_matrix = self.score(self.part.val)
        metrics = {
            "arch": self.config.arch, "weights": str(self.config.weights), "freeze_backbone": self.config.freeze_backbone,
            "device": str(self.device), "world_size": self.dist.world, "amp": str(self.amp) if self.amp else None,
            "threads": torch.get_num_threads(), "fold": self.part.fold,
            "epochs_run": self.state["epoch"], "best_epoch": self.state["best_epoch"],
            "stopped_early": self.state["stopped_early"],
            "split_sizes": self.data_record["split_sizes"],
            "val": {"loss": val_loss, "accuracy": accuracy(val_matrix), "per_class_recall": _recall(val_matrix, self.labels)},
            "train_time_s": round(train_seconds, 2),
            "train_img_per_s": round(train_images / train_seconds, 2) if train_seconds else None,
            "fit_wall_time_s": round(seconds, 2), "decode_time_s": round(self.decoded.seconds, 2),
            "bad_images": self.data_record["bad_images"],
        }  # fmt: skip
        # One plotted report (the test one when there is a test split): plotting costs seconds on 2 cores.
        reports = [("confusion-val", val_matrix, "validation")]
        if self.part.test:
            test_loss, test_matrix = self.score(self.part.test)
            metrics["test"] = {
                "loss": test_loss,
                "accuracy": accuracy(test_matrix),
                "per_class_recall": _recall(test_matrix, self.labels),
            }
            reports = [("confusion-test", test_matrix, "held-out test")]
        if self.dist.main:
            facts = {"arch": self.config.arch, "data": str(self.folder.root), "best epoch": self.state["best_epoch"]}
            for stem, matrix, what in reports:
                write_report(self.out, stem, matrix, self.labels, f"{self.config.arch}: {what} images", facts)
            save_checkpoint(self.best_path, self.model, self.meta(metrics))
            atomic_write_json(self.out / "metrics.json", metrics)
        self.dist.barrier()
        model = self.model.cpu().eval()
        return TrainResult(
            self.out, self.best_path, metrics, [(b["path"], b["reason"]) for b in self.data_record["bad_images"]], model
        )


def _recall(matrix: np.ndarray, labels: list[str]) -> dict:
    return {label: (None if np.isnan(r) else float(r)) for label, r in zip(labels, per_class_recall(matrix))}


# -- entry point ------------------------------------------------------------------------------


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune `config.arch` on `config.data`; under torchrun, each process calls this."""
    config.check()
    dist = Dist.from_env()
    started_group = False
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        started_group = True
    try:
        return _train(config, dist, time.perf_counter())
    finally:
        if started_group:
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, dist: Dist, started: float) -> TrainResult:
    device = resolve_device(config.device, dist, config.threads)
    folder = scan_image_folder(Path(config.data))
    names = [_relative(folder, i) for i in range(len(folder.samples))]
    if config.folds:
        split = stratified_split(folder.samples, val_fraction=0.0, test_fraction=config.test_fraction, seed=config.seed)
        rest = split.train
        folds = kfold_indices([folder.samples[i] for i in rest], config.folds, seed=config.seed)
        parts = [Part([rest[i] for i in tr], [rest[i] for i in va], split.test, k) for k, (tr, va) in enumerate(folds)]
    else:
        split = stratified_split(folder.samples, config.val_fraction, config.test_fraction, seed=config.seed)
        parts = [Part(split.train, split.val, split.test)]
    train_idx = {i for p in parts for i in p.train}
    eval_idx = {i for p in parts for i in p.val + p.test}
    decoded = decode_all(folder, train_idx, eval_idx, config.spec, config.workers or _cores(),
                         "decoding" if config.progress and dist.main else None)  # fmt: skip
    bad = [{"path": names[i], "reason": r} for i, r in sorted(decoded.bad.items())]
    for entry in bad:
        if config.progress and dist.main:
            print(f"skipped unreadable image {entry['path']}: {entry['reason']}", file=sys.stderr)
    parts = [Part(*[[i for i in idx if i not in decoded.bad] for idx in (p.train, p.val, p.test)], p.fold) for p in parts]
    for p in parts:
        if not p.train or not p.val:
            raise BadInputError(
                f"{config.data}: too few readable images for a train and a validation part ({len(folder.samples)} files)"
            )
    test_files = [names[i] for i in parts[0].test]
    data_record = {
        "root": str(folder.root.resolve()),
        "files_sha256": files_digest(names),
        "class_counts": folder.counts(),
        "split": {"seed": config.seed, "val_fraction": 0.0 if config.folds else config.val_fraction,
                  "test_fraction": config.test_fraction, "folds": config.folds,
                  "method": "dermmobile.data.stratified_split" + (" + kfold_indices" if config.folds else "")},
        "test_files": test_files,
        "bad_images": bad,
        "skipped_files": [{"path": str(p.relative_to(folder.root)), "reason": r} for p, r in folder.skipped],
    }  # fmt: skip
    out = Path(config.out)
    if not config.folds:
        result = Run(config, folder, decoded, parts[0], out, device, dist, data_record).fit()
        result.metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
        if dist.main:
            atomic_write_json(out / "metrics.json", result.metrics)
        return result
    results = []
    for part in parts:
        if config.progress and dist.main:
            print(f"fold {part.fold + 1}/{config.folds}", file=sys.stderr)
        results.append(Run(config, folder, decoded, part, out / f"fold-{part.fold}", device, dist, data_record).fit())
    val_acc = np.array([r.metrics["val"]["accuracy"] for r in results])
    best = int(val_acc.argmax())
    per_fold = [
        {"fold": r.metrics["fold"], "val_accuracy": r.metrics["val"]["accuracy"], "best_epoch": r.metrics["best_epoch"],
         "test_accuracy": r.metrics.get("test", {}).get("accuracy"), "checkpoint": str(r.checkpoint)}
        for r in results
    ]  # fmt: skip
    summary = {
        "arch": config.arch, "folds": config.folds, "per_fold": per_fold,
        "val_accuracy_mean": float(val_acc.mean()), "val_accuracy_std": float(val_acc.std()),  # population std (ddof 0)
        "best_fold": best, "bad_images": bad, "wall_time_s": round(time.perf_counter() - started, 2),
    }  # fmt: skip
    if dist.main:
        atomic_write_json(out / "metrics.json", summary)
    return TrainResult(out, results[best].checkpoint, summary, results[best].bad_images, results[best].model)
