"""Fine-tuning, fast and restartable: plain `train_one_epoch` and `evaluate_split` functions
(in the style of torchvision's references/classification/train.py) wired by `fit`.

- Every image is decoded once, up front. Training keeps uint8 copies whose shorter side is
  the spec's resize in an `ImageBank` (on the GPU when there is one) and augments whole
  batches there (`dermmobile.augment`); validation and test use the one preprocessing spec
  (`spec.decode` then `spec.array`), exactly what an exported artifact sees.
  Unreadable files are skipped and listed in the run's outputs.
- No step waits for the host: losses and accuracies are summed on the device and read once
  per epoch; the learning rate is set per step from a formula (warm-up, then cosine or step).
- Deterministic from --seed: the model init, the shuffling (DistributedSampler's seeded
  order, one replica when not distributed), every augmentation draw (a generator per seed,
  epoch, rank and batch) and dropout (re-seeded per epoch) depend on the seed and the epoch
  only. That is why a resumed run gives the same weights as an uninterrupted one.
- The run folder (`dermmobile.run_folder`) writes best.safetensors, last.pt, log.jsonl and
  metrics.json atomically and validates last.pt on --resume.
- Multi-GPU through torchrun: one process per device, DistributedDataParallel, rank 0
  writes. Every rank validates on the whole (small) validation set with the same weights,
  so early-stopping decisions agree without extra messages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermmobile.augment import ImageBank, augment_batch, batch_generator, downscale
from dermmobile.checkpoint import CheckpointMeta
from dermmobile.cores import usable_cores
from dermmobile.data import ImageFolder, files_digest, kfold_indices, scan_image_folder, stratified_split
from dermmobile.errors import BadImageError, BadInputError, DermmobileError
from dermmobile.evaluate import predict_logits, write_report
from dermmobile.metrics import accuracy, confusion_matrix, per_class_recall
from dermmobile.models import build_model, get_head, model_info
from dermmobile.preprocess import PreprocessSpec
from dermmobile.progress import progress_bar
from dermmobile.run_folder import RunFolder, TrainState
from dermmobile.train_config import AugmentConfig, TrainConfig, from_recipe

__all__ = ["AugmentConfig", "TrainConfig", "TrainResult", "evaluate_split", "from_recipe", "train", "train_one_epoch"]


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
        torch.set_num_threads(threads or max(1, usable_cores() // local))
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
            image = spec.decode(folder.samples[index].path)  # the spec's own decode (v2: reduced JPEG decode)
        except BadImageError as exc:
            return index, None, None, exc.reason
        small = downscale(image, spec.resize) if index in train_idx else None
        full = spec.array(np.asarray(image)) if index in eval_idx else None
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


@dataclass
class Part:
    """The sample indices of one run (one split, or one fold) after unreadable files are dropped."""

    train: list[int]
    val: list[int]
    test: list[int]
    fold: int | None = None


@dataclass
class Inputs:
    """What every run (split or fold) of one `train` call shares."""

    folder: ImageFolder
    decoded: Decoded
    data_record: dict  # provenance stored in each checkpoint (root, file digest, split, bad images)

    def relative(self, index: int) -> str:
        return self.folder.samples[index].path.relative_to(self.folder.root).as_posix()

    def labels_of(self, indices: list[int]) -> list[int]:
        return [self.folder.samples[i].label for i in indices]


def epoch_order(count: int, dist: Dist, seed: int, epoch: int) -> list[int]:
    """This rank's shuffled positions for `epoch`: DistributedSampler's seeded order."""
    sampler = torch.utils.data.DistributedSampler(range(count), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def epoch_batches(bank: ImageBank, order: list[int], config: TrainConfig, spec: PreprocessSpec, epoch: int,
                  rank: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Augmented (images, labels) batches on `device`, channels_last, drawn without a host sync."""
    indices = torch.tensor(order, dtype=torch.int64)
    if device.type == "cuda":
        indices = indices.pin_memory()  # slices copy to the GPU asynchronously
    for batch, start in enumerate(range(0, len(order), config.batch_size)):
        pixels, sizes, labels = bank.gather(indices[start : start + config.batch_size], device)
        x = augment_batch(pixels, sizes, spec, config.augment, batch_generator(device, config.seed, epoch, rank, batch))
        yield x.contiguous(memory_format=torch.channels_last), labels


# -- the model, its optimiser and its schedule ---------------------------------------------


@dataclass
class Learner:
    """A model with everything that updates it."""

    model: nn.Module  # the bare model: its state is what checkpoints hold
    forward: nn.Module  # the model, or its DistributedDataParallel wrapper
    head: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.CrossEntropyLoss
    amp: torch.dtype | None
    freeze_backbone: bool

    def train_mode(self) -> None:
        self.model.train()
        if self.freeze_backbone:
            # A frozen backbone runs as in inference: BatchNorm keeps its ImageNet statistics and
            # dropout is off, so only the head learns, and no backward pass enters the backbone.
            self.model.eval()
            self.head.train()


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets weight 1 everywhere."""
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def build_learner(config: TrainConfig, num_classes: int, counts: np.ndarray, device: torch.device, dist: Dist) -> Learner:
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes, config.weights, freeze_backbone=config.freeze_backbone)
    head = get_head(model, model_info(config.arch))
    model = model.to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    amp = amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    weights = class_weights(counts) if config.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing).to(device)
    forward = model
    if dist.world > 1:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Learner(model, forward, head, optimizer, scaler, criterion, amp, config.freeze_backbone)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step `step` (0-based): linear warm-up, then the decay."""
    epoch_float = step / steps_per_epoch
    if epoch_float < config.warmup_epochs:
        return config.lr * (step + 1) / (config.warmup_epochs * steps_per_epoch)
    if config.lr_decay == "cosine":
        done = (epoch_float - config.warmup_epochs) / (config.epochs - config.warmup_epochs)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    if config.lr_decay == "step":
        return config.lr * config.lr_gamma ** (step // steps_per_epoch // config.lr_step)
    return config.lr


# -- one epoch, one evaluation ---------------------------------------------------------------


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    lr: float  # at the epoch's first step


def train_one_epoch(learner: Learner, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr_of_step: Callable[[int], float],
                    first_step: int, desc: str | None = None) -> EpochStats:  # fmt: skip
    """One pass over `batches`. Sums stay on the device: the host reads them once, at the end."""
    learner.train_mode()
    device = next(learner.model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
    start = time.perf_counter()
    step, images = first_step, 0
    for x, y in progress_bar(batches, desc=desc, unit="batch"):
        for group in learner.optimizer.param_groups:
            group["lr"] = lr_of_step(step)
        with torch.autocast(device.type, dtype=learner.amp, enabled=learner.amp is not None):
            logits = learner.forward(x)
            loss = learner.criterion(logits.float(), y)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss).backward()
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
        totals[0] += loss.detach() * len(y)
        totals[1] += (logits.argmax(1) == y).sum()
        step, images = step + 1, images + len(y)
    totals[2] = images
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    loss_sum, correct, images = totals.tolist()  # the epoch's one host sync
    return EpochStats(loss_sum / images, correct / images, int(images), time.perf_counter() - start, lr_of_step(first_step))


@dataclass
class SplitScore:
    loss: float  # the training criterion's class weights, no label smoothing
    matrix: np.ndarray  # confusion matrix, rows true

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)


def evaluate_split(learner: Learner, arrays: np.ndarray, targets: np.ndarray, batch_size: int) -> SplitScore:
    """Loss and confusion matrix of the current weights on preprocessed images (the spec, no augmentation)."""
    device = next(learner.model.parameters()).device
    logits = predict_logits(learner.model, arrays, device, batch_size=batch_size, amp_dtype=learner.amp)
    weight = None if learner.criterion.weight is None else learner.criterion.weight.cpu()
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), weight=weight).item()
    return SplitScore(loss, confusion_matrix(targets, logits.argmax(1), logits.shape[1]))


def _sync_buffers(model: nn.Module, device: torch.device) -> None:
    """DDP broadcasts buffers at each forward, then every rank updates its BatchNorm statistics from
    its own batch: re-align them so all ranks validate (and stop) alike."""
    for buffer in model.buffers():
        synced = buffer.detach().to(device)
        torch.distributed.broadcast(synced, 0)
        buffer.copy_(synced)


# -- one run (a split or a fold) ------------------------------------------------------------


class Run:
    """One split or fold: wires the data, the learner and the run folder through the epoch loop."""

    def __init__(self, config: TrainConfig, inputs: Inputs, part: Part, out: Path, device: torch.device, dist: Dist):
        self.config, self.inputs, self.part, self.device, self.dist = config, inputs, part, device, dist
        self.spec = config.spec
        self.labels = inputs.folder.classes
        self.folder = RunFolder(out, writer=dist.main)
        self.data_record = {**inputs.data_record, "fold": part.fold, "val_files": [inputs.relative(i) for i in part.val],
                            "split_sizes": {"train": len(part.train), "val": len(part.val), "test": len(part.test)}}  # fmt: skip
        self.verbose = config.progress and dist.main

    def fingerprint(self) -> dict:
        """The settings that must match for --resume to continue this run rather than start another."""
        c = self.config
        keys = ("arch", "weights", "freeze_backbone", "epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_decay",
                "lr_step", "lr_gamma", "warmup_epochs", "label_smoothing", "seed", "balance", "val_fraction",
                "test_fraction", "folds")  # fmt: skip
        found = {k: str(getattr(c, k)) for k in keys}
        found.update(spec=json.dumps(self.spec.to_dict()), augment=json.dumps(c.augment.to_dict()))
        found.update(files_sha256=self.data_record["files_sha256"], fold=str(self.part.fold), world=str(self.dist.world))
        return found

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def meta(self, metrics: dict) -> CheckpointMeta:
        return CheckpointMeta(self.config.arch, list(self.labels), self.spec.to_dict(), args=self.config.to_dict(),
                              metrics=metrics, data=self.data_record)  # fmt: skip

    def score(self, learner: Learner, indices: list[int]) -> SplitScore:
        arrays = np.stack([self.inputs.decoded.eval[i] for i in indices])
        targets = np.asarray(self.inputs.labels_of(indices))
        return evaluate_split(learner, arrays, targets, batch_size=max(32, self.config.batch_size))

    def fit(self) -> TrainResult:
        c = self.config
        counts = np.bincount(self.inputs.labels_of(self.part.train), minlength=len(self.labels))
        learner = build_learner(c, len(self.labels), counts, self.device, self.dist)
        state, best = TrainState(), None
        if self.folder.has_run(c.resume):
            state = self.folder.load_last(self.fingerprint(), learner.model, learner.optimizer, learner.scaler)
            best = self.folder.load_best_weights(learner.model)
            self.log(f"resuming {self.folder.path} after epoch {state.epoch}")
        elif c.resume:
            self.log(f"nothing to resume in {self.folder.path}: starting a new run")
        landscape = c.augment.quarter_turns and (c.augment.hflip or c.augment.vflip)
        images = [self.inputs.decoded.train[i] for i in self.part.train]
        bank = ImageBank.build(images, self.inputs.labels_of(self.part.train), landscape).place(self.device)
        steps = math.ceil(len(epoch_order(len(self.part.train), self.dist, c.seed, 0)) / c.batch_size)
        while state.epoch < c.epochs and not state.stopped_early:
            epoch = state.epoch + 1
            torch.manual_seed(c.seed * 100_003 + epoch)  # dropout draws: a function of the epoch, for resume
            order = epoch_order(len(self.part.train), self.dist, c.seed, epoch)
            batches = epoch_batches(bank, order, c, self.spec, epoch, self.dist.rank, self.device)
            desc = f"epoch {epoch}/{c.epochs}" if self.verbose else None
            stats = train_one_epoch(learner, batches, lambda s: lr_at(c, s, steps), (epoch - 1) * steps, desc)
            if self.dist.world > 1:
                _sync_buffers(learner.model, self.device)
            best = self.end_epoch(learner, state, epoch, stats, best)
        if state.stopped_early:
            self.log(f"early stop: validation loss has not improved for {c.patience} epochs")
        return self.finish(learner, state, best)

    def end_epoch(self, learner: Learner, state: TrainState, epoch: int, stats: EpochStats, best: dict | None) -> dict | None:
        """Validate, keep the best weights, write the epoch's files; returns the best weights so far."""
        val = self.score(learner, self.part.val)
        improved = state.record(epoch, val.loss, self.config.patience)
        state.train_seconds += stats.seconds
        state.train_images += stats.images
        record = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy, "lr": stats.lr,
                  "time_s": round(stats.seconds, 3), "img_per_s": round(stats.images / stats.seconds, 2),
                  "val_loss": val.loss, "val_acc": val.accuracy, "best": improved}  # fmt: skip
        if improved:
            best = {k: v.detach().cpu().clone() for k, v in learner.model.state_dict().items()}
            self.folder.save_best(learner.model, self.meta({"best": {"epoch": epoch, "val_loss": val.loss,
                                                                     "val_acc": val.accuracy}}))  # fmt: skip
        self.folder.append_log(record)
        # last.pt after the log: a crash between the two repeats one epoch, loses none.
        self.folder.save_last(self.fingerprint(), state, learner.model, learner.optimizer, learner.scaler)
        self.dist.barrier()
        mark = " *" if improved else ""
        self.log(f"epoch {epoch}: train loss {stats.loss:.3f} acc {stats.accuracy:.1%} | val loss {val.loss:.3f} "
                 f"acc {val.accuracy:.1%} | lr {stats.lr:.2g} | {record['img_per_s']:.1f} img/s{mark}")  # fmt: skip
        if self.config.on_epoch_end is not None:
            self.config.on_epoch_end(record)
        return best

    def finish(self, learner: Learner, state: TrainState, best: dict | None) -> TrainResult:
        """Reload the best weights, score them on validation and test, write the reports."""
        if best is None:
            raise DermmobileError(f"{self.folder.path}: no epoch finished, so there is no best checkpoint")
        learner.model.load_state_dict(best)
        val = self.score(learner, self.part.val)
        c = self.config
        metrics = {
            "arch": c.arch, "recipe": c.recipe, "weights": str(c.weights), "freeze_backbone": c.freeze_backbone,
            "device": str(self.device), "world_size": self.dist.world, "amp": str(learner.amp) if learner.amp else None,
            "threads": torch.get_num_threads(), "fold": self.part.fold, "epochs_run": state.epoch,
            "best_epoch": state.best_epoch, "stopped_early": state.stopped_early, "split_sizes": self.data_record["split_sizes"],
            "val": {"loss": val.loss, "accuracy": val.accuracy, "per_class_recall": _recall(val.matrix, self.labels)},
            "train_time_s": round(state.train_seconds, 2),
            "train_img_per_s": round(state.train_images / state.train_seconds, 2) if state.train_seconds else None,
            "decode_time_s": round(self.inputs.decoded.seconds, 2), "bad_images": self.data_record["bad_images"],
        }  # fmt: skip
        # One plotted report (the test one when there is a test split): plotting costs seconds on 2 cores.
        report = ("confusion-val", val.matrix, "validation")
        if self.part.test:
            test = self.score(learner, self.part.test)
            recall = _recall(test.matrix, self.labels)
            metrics["test"] = {"loss": test.loss, "accuracy": test.accuracy, "per_class_recall": recall}
            report = ("confusion-test", test.matrix, "held-out test")
        if self.dist.main:
            facts = {"arch": c.arch, "data": str(self.inputs.folder.root), "best epoch": state.best_epoch}
            write_report(self.folder.path, report[0], report[1], self.labels, f"{c.arch}: {report[2]} images", facts)
        self.folder.save_best(learner.model, self.meta(metrics))
        self.folder.write_metrics(metrics)
        self.dist.barrier()
        bad = [(b["path"], b["reason"]) for b in self.data_record["bad_images"]]
        return TrainResult(self.folder.path, self.folder.best, metrics, bad, learner.model.cpu().eval())


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


def default_spec(arch: str) -> PreprocessSpec:
    """The architecture's input size (its ImageNet resolution), resized in the 256:224 ratio."""
    size = model_info(arch).input_size
    return PreprocessSpec(resize=round(size * 256 / 224), crop=size)


def split_parts(folder: ImageFolder, config: TrainConfig) -> list[Part]:
    """One train/val/test split, or K folds over the non-test images (test held out first)."""
    if not config.folds:
        split = stratified_split(folder.samples, config.val_fraction, config.test_fraction, seed=config.seed)
        return [Part(split.train, split.val, split.test)]
    split = stratified_split(folder.samples, val_fraction=0.0, test_fraction=config.test_fraction, seed=config.seed)
    rest = split.train
    folds = kfold_indices([folder.samples[i] for i in rest], config.folds, seed=config.seed)
    return [Part([rest[i] for i in tr], [rest[i] for i in va], split.test, k) for k, (tr, va) in enumerate(folds)]


def load_inputs(config: TrainConfig, dist: Dist) -> tuple[Inputs, list[Part]]:
    """Scan, split and decode once; drop unreadable images from every part."""
    folder = scan_image_folder(Path(config.data))
    parts = split_parts(folder, config)
    train_idx, eval_idx = {i for p in parts for i in p.train}, {i for p in parts for i in p.val + p.test}
    desc = "decoding" if config.progress and dist.main else None
    decoded = decode_all(folder, train_idx, eval_idx, config.spec, config.workers or usable_cores(), desc)
    inputs = Inputs(folder, decoded, {})
    bad = [{"path": inputs.relative(i), "reason": r} for i, r in sorted(decoded.bad.items())]
    if config.progress and dist.main:
        for entry in bad:
            print(f"skipped unreadable image {entry['path']}: {entry['reason']}", file=sys.stderr)
    parts = [Part(*[[i for i in idx if i not in decoded.bad] for idx in (p.train, p.val, p.test)], p.fold) for p in parts]
    if any(not p.train or not p.val for p in parts):
        count = len(folder.samples)
        raise BadInputError(f"{config.data}: too few readable images for a train and a validation part ({count} files)")
    inputs.data_record = {
        "root": str(folder.root.resolve()),
        "files_sha256": files_digest(inputs.relative(i) for i in range(len(folder.samples))),
        "class_counts": folder.counts(),
        "split": {"seed": config.seed, "val_fraction": 0.0 if config.folds else config.val_fraction,
                  "test_fraction": config.test_fraction, "folds": config.folds,
                  "method": "dermmobile.data.stratified_split" + (" + kfold_indices" if config.folds else "")},
        "test_files": [inputs.relative(i) for i in parts[0].test],
        "bad_images": bad,
        "skipped_files": [{"path": str(p.relative_to(folder.root)), "reason": r} for p, r in folder.skipped],
    }  # fmt: skip
    return inputs, parts


def _train(config: TrainConfig, dist: Dist, started: float) -> TrainResult:
    if config.spec is None:
        config = replace(config, spec=default_spec(config.arch))
    out = Path(config.out)
    for folder in [RunFolder(out)] + [RunFolder(out / f"fold-{k}") for k in range(config.folds)]:
        folder.has_run(config.resume)  # refuse a file as --out, or an existing run without --resume, before decoding
    device = resolve_device(config.device, dist, config.threads)
    inputs, parts = load_inputs(config, dist)
    if not config.folds:
        result = Run(config, inputs, parts[0], out, device, dist).fit()
        result.metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
        RunFolder(out, dist.main).write_metrics(result.metrics)
        return result
    results = []
    for part in parts:
        if config.progress and dist.main:
            print(f"fold {part.fold + 1}/{config.folds}", file=sys.stderr)
        results.append(Run(config, inputs, part, out / f"fold-{part.fold}", device, dist).fit())
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
        "best_fold": best, "bad_images": inputs.data_record["bad_images"], "wall_time_s": round(time.perf_counter() - started, 2),
    }  # fmt: skip
    RunFolder(out, dist.main).write_metrics(summary)
    return TrainResult(out, results[best].checkpoint, summary, results[best].bad_images, results[best].model)
