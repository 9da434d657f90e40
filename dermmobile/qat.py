"""Quantization-aware training (QAT): fine-tune a checkpoint with fake quantization for one target's int8.

Why: post-training int8 of a fine-tuned 27-class model flips near-ties (93-96 % agreement
on sd198-27). QAT trains the weights against int8 rounding instead of hoping they survive it.

How, with PT2E as torchao documents it:
1. The checkpoint's model is captured by torch.export in training form (batch dimension
   dynamic) and prepared by `prepare_qat_pt2e` with the target's own int8 quantizer in its
   is_qat form (`Target.pt2e_quantizer(is_qat=True)`): the same annotation as the target's
   int8 export, with fake-quantize observers (moving-average ranges) in place of calibration.
2. A few epochs on the checkpoint's own training split (never its validation or held-out
   test files), with its recorded augmentation and class weighting. BatchNorm statistics
   freeze after `freeze_bn_after` epochs (batch norm then normalises with its running
   statistics, exactly as the converted int8 graph will) and the observers after
   `freeze_observers_after`, so the last epochs fit the weights to fixed int8 grids.
3. The prepared graph's whole state (float weights, BatchNorm statistics, every observer's
   range, scale and zero point) is saved as an ordinary safetensors checkpoint whose
   metadata `qat` names the target, the quantizer and the source checkpoint.

Export rebuilds the same graph (capture and prepare are deterministic for a given torch and
torchao), loads that state and converts it (`targets/pt2e.converted_qat`): the artifact
carries the ranges QAT learned, nothing is re-calibrated, and its parity is checked against
the fake-quantize model. A QAT checkpoint exports only to the target and int8 it was trained for.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermmobile.errors import BadInputError, MissingBackendError

QAT_FORMAT = "dermmobile-qat-v1"
CHECKPOINT_NAME = "qat.safetensors"


class FakeQuantModel(nn.Module):
    """A trained QAT graph in inference form (batch norm on running statistics, observers off).

    Exported graphs refuse eval()/train(): they cannot switch batch norm and dropout by
    themselves. Every runner in dermmobile calls eval() on its model, so this wrapper takes
    that call; the graph is already in inference form and stays there.
    """

    def __init__(self, prepared):
        super().__init__()
        self.prepared = prepared
        self.training = False

    def forward(self, x):
        return self.prepared(x)

    def train(self, mode: bool = True):
        if mode:
            raise BadInputError("a QAT checkpoint's model runs inference only; to train further, run `dermmobile qat` again")
        return self


# -- the prepared graph -----------------------------------------------------------------------


def qat_targets() -> list[str]:
    """Targets whose int8 export is PT2E (they define pt2e_quantizer), in registry order."""
    from dermmobile.targets import get_target, target_names

    return [name for name in target_names() if hasattr(get_target(name), "pt2e_quantizer")]


def qat_quantizer(target: str):
    """The target's int8 quantizer in its QAT form, or a clear error where its converter is missing."""
    from dermmobile.targets import get_target

    if target not in qat_targets():
        raise BadInputError(
            f"quantization-aware training is for targets whose int8 is PT2E: {', '.join(qat_targets())}; got {target!r}"
        )
    chosen = get_target(target)
    try:
        quantizer = chosen.pt2e_quantizer(is_qat=True)
    except ImportError as exc:
        raise MissingBackendError(
            f"{target} QAT needs its quantizer ({exc}). Install it with: pip install 'dermmobile[{chosen.extra}]'"
        ) from exc
    return quantizer.set_global(unfused(quantizer.global_config))


def unfused(config):
    """The same QAT config with torchao's FakeQuantize in place of FusedMovingAvgObsFakeQuantize.

    Why: the fused kernel (torch.fused_moving_avg_obs_fake_quant) recomputes scale and zero
    point from the running range on every call, with ATen's formula, while convert_pt2e
    asks the observer (calculate_qparams): for per-channel symmetric weights in [-127, 127]
    the two disagree (range/127.5 against range/127, XNNPACK's 2**-12 floor ignored, zero
    points off 0). On a QAT Lite0 the converted graph then agreed with the fake-quantized
    one on 88 % of test photos. FakeQuantize trains with exactly the observer's numbers,
    the ones the exported int8 graph gets.
    """
    from dataclasses import replace

    from torchao.quantization.pt2e.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize

    def swap(spec):
        ctr = getattr(spec, "observer_or_fake_quant_ctr", None)
        if ctr is None or getattr(getattr(ctr, "p", None), "func", None) is not FusedMovingAvgObsFakeQuantize:
            return spec
        return replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(*ctr.p.args, **ctr.p.keywords))

    fields = ("input_activation", "output_activation", "weight", "bias")
    return replace(config, **{name: swap(getattr(config, name)) for name in fields})


def prepare(model, target: str, crop: int):
    """Capture `model` in training form (dynamic batch) and insert the target's fake quantizers."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = qat_quantizer(target)
    model = model.cpu().train()
    # Zeros, not an image: the capture then depends on nothing but the model and the crop.
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False).module()
    return prepare_qat_pt2e(graph, quantizer)


def freeze_batch_norm(prepared) -> int:
    """Make every batch norm of the graph use its running statistics while training; return how many.

    PT2E graphs cannot be switched with .eval(): the training flag of each aten.batch_norm
    call is set to False, as torchao's QAT tutorial does.
    """
    frozen = 0
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.batch_norm.default and node.args[5]:
            args = list(node.args)
            args[5] = False
            node.args = tuple(args)
            frozen += 1
    prepared.recompile()
    return frozen


def set_mode(prepared, training: bool, bn_frozen: bool = True, observing: bool = False) -> None:
    """Training or inference form of the graph; observers learn ranges only when asked (never on evaluation images)."""
    from torchao.quantization.pt2e import (
        disable_observer,
        enable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    if training:
        move_exported_model_to_train(prepared)
        if bn_frozen:
            freeze_batch_norm(prepared)
    else:
        move_exported_model_to_eval(prepared)
    prepared.apply(enable_observer if training and observing else disable_observer)


def rebuild_qat_model(meta, state: dict, path: Path) -> FakeQuantModel:
    """The fake-quantize model of a QAT checkpoint: the same graph prepared again, its saved state loaded."""
    from dermmobile.models import build_model
    from dermmobile.targets.base import package_version

    record = meta.qat
    if not isinstance(record, dict) or record.get("format") != QAT_FORMAT or not isinstance(record.get("target"), str):
        raise BadInputError(f"{path}: its qat metadata is not a {QAT_FORMAT} record; re-run `dermmobile qat`")
    prepared = prepare(build_model(meta.arch, len(meta.labels), weights="none"), record["target"], meta.spec.crop)
    # safetensors keeps no module versions; without them torchao's observers take the state
    # for their version 1 and reset each eps (XNNPACK's 2**-12 scale floor) to float32's.
    state = OrderedDict(state)
    state._metadata = prepared.state_dict()._metadata
    try:
        prepared.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        made = record.get("toolchain", {})
        here = {name: package_version(name) for name in made}
        raise BadInputError(
            f"{path}: its QAT graph does not rebuild here (made with {made}, this machine has {here}): "
            f"{' '.join(str(exc).split())[:300]}. Re-run `dermmobile qat` from its source checkpoint with this toolchain"
        ) from None
    set_mode(prepared, training=False)
    return FakeQuantModel(prepared)


# -- which images QAT may train on --------------------------------------------------------------


def training_split(folder, meta) -> tuple[list[int], list[int]]:
    """(train, validation) sample indices of the checkpoint's own split; its held-out test files never appear.

    The recorded test and validation file lists (what `dermmobile train` writes) decide; a
    checkpoint without them gets the default split, the held-out part export and bench assume.
    """
    from dermmobile.data import stratified_split

    data = meta.data or {}
    test, val = data.get("test_files"), data.get("val_files")
    if isinstance(test, list) and isinstance(val, list):
        names = [s.path.relative_to(folder.root).as_posix() for s in folder.samples]
        held, seen = set(map(str, test)), set(map(str, val))
        train = [i for i, name in enumerate(names) if name not in held and name not in seen]
        return train, [i for i, name in enumerate(names) if name in seen]
    split = stratified_split(folder.samples)
    return split.train, split.val


# -- training -------------------------------------------------------------------------------------


@dataclass
class QatConfig:
    checkpoint: Path  # the fine-tuned float checkpoint to start from
    target: str  # tflite | executorch: whose int8 quantizer to train with
    out: Path
    data: Path | None = None  # default: the data root the checkpoint records
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-3  # cosine to 0 over the epochs
    momentum: float = 0.9
    weight_decay: float = 1e-4
    freeze_bn_after: int = 1  # epochs that still update BatchNorm statistics
    freeze_observers_after: int = 2  # epochs whose batches still move the int8 ranges
    device: str = "cpu"
    workers: int = 0  # threads that augment images; 0 = one per core
    threads: int = 0  # torch CPU threads; 0 = every core
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        counts = {"epochs": self.epochs, "batch-size": self.batch_size}
        for name, value in counts.items():
            if value < 1:
                raise BadInputError(f"--{name} must be at least 1, got {value}")
        if self.freeze_bn_after < 0 or self.freeze_observers_after < 1:
            raise BadInputError(
                "--freeze-bn-after must be 0 or more and --freeze-observers-after 1 or more (epochs), "
                f"got {self.freeze_bn_after} and {self.freeze_observers_after}"
            )
        if self.lr <= 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise BadInputError(
                f"need --lr > 0, --momentum in [0, 1), --weight-decay >= 0; got {self.lr}, {self.momentum}, {self.weight_decay}"
            )
        qat_quantizer(self.target)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


@dataclass
class QatResult:
    checkpoint: Path
    metrics: dict
    model: FakeQuantModel


def _augment_config(meta):
    """The augmentation the checkpoint was trained with (its recorded arguments), else the trainer's default."""
    from dermmobile.augment import AugmentConfig

    recorded = (meta.args or {}).get("augment")
    if not isinstance(recorded, dict):
        return AugmentConfig()
    try:
        return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    except TypeError as exc:
        raise BadInputError(f"{meta.arch} checkpoint records an augmentation this dermmobile cannot use ({exc})") from None


@dataclass
class _Images:
    """The checkpoint's training and validation images, decoded once by the trainer's own decoding."""

    folder: object  # data.ImageFolder
    train: list[int]
    val: list[int]
    decoded: object  # trainer.Decoded: uint8 training copies, spec-preprocessed validation arrays
    labels: np.ndarray  # the class index of every sample in the folder

    def val_arrays(self, crop: int) -> np.ndarray:
        return np.stack([self.decoded.eval[i] for i in self.val]) if self.val else np.zeros((0, 3, crop, crop), np.float32)


def _load_images(config: QatConfig, meta, workers: int) -> _Images:
    from dermmobile.data import scan_image_folder
    from dermmobile.trainer import decode_all

    root = config.data or (meta.data or {}).get("root")
    if not root:
        raise BadInputError(f"{config.checkpoint} records no data folder; pass --data DIR (the ImageFolder it was trained on)")
    folder = scan_image_folder(Path(root), expected_classes=meta.labels)
    train, val = training_split(folder, meta)
    decoded = decode_all(folder, set(train), set(val), meta.spec, workers, "decoding" if config.progress else None)
    train = [i for i in train if i not in decoded.bad]
    if not train:
        raise BadInputError(f"{root}: no readable training images outside the checkpoint's validation and test files")
    labels = np.asarray([s.label for s in folder.samples])
    return _Images(folder, train, [i for i in val if i not in decoded.bad], decoded, labels)


def _criterion(meta, images: _Images, device) -> nn.CrossEntropyLoss:
    """The checkpoint's own loss: class-weighted by inverse frequency unless it recorded --balance none."""
    if (meta.args or {}).get("balance", "loss") != "loss":
        return nn.CrossEntropyLoss()
    counts = np.bincount(images.labels[images.train], minlength=len(meta.labels))
    weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weights.to(device))


def _train_epoch(prepared, images: _Images, epoch: int, config: QatConfig, meta, optimizer, criterion, pool, device) -> dict:
    """One pass over the training images in a seeded order, augmented per (seed, epoch, image) as the trainer does."""
    from dermmobile.augment import augment
    from dermmobile.progress import progress_bar

    bn_frozen, observing = epoch > config.freeze_bn_after, epoch <= config.freeze_observers_after
    set_mode(prepared, training=True, bn_frozen=bn_frozen, observing=observing)
    torch.manual_seed(config.seed * 100_003 + epoch)  # dropout draws
    augmentation = _augment_config(meta)

    def one(index: int) -> np.ndarray:
        return augment(images.decoded.train[index], meta.spec, np.random.default_rng([config.seed, epoch, index]), augmentation)

    order = [images.train[i] for i in np.random.default_rng([config.seed, epoch]).permutation(len(images.train))]
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    totals = np.zeros(3)  # loss sum, correct, images
    started = time.perf_counter()
    for batch in progress_bar(batches, desc=f"qat epoch {epoch}/{config.epochs}" if config.progress else None, unit="batch"):
        x = torch.from_numpy(np.stack(list(pool.map(one, batch)))).to(device)
        y = torch.from_numpy(images.labels[batch]).to(device)
        logits = prepared(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)]
    seconds = time.perf_counter() - started
    return {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "bn_frozen": bn_frozen, "observers": observing,
            "train_loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2],
            "time_s": round(seconds, 2), "img_per_s": round(totals[2] / seconds, 2)}  # fmt: skip


def train_qat(config: QatConfig) -> QatResult:
    """Fine-tune the checkpoint with fake quantization and save the QAT checkpoint (see the module docstring)."""
    from dermmobile.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
    from dermmobile.fsutil import atomic_write_json
    from dermmobile.trainer import Dist, resolve_device

    config.check()
    started = time.perf_counter()
    qat = read_meta(config.checkpoint).qat
    if qat:
        raise BadInputError(
            f"{config.checkpoint} is already a QAT checkpoint (for {qat.get('target')}); "
            f"start from the float checkpoint it came from ({qat.get('source_checkpoint')})"
        )
    source = load_checkpoint(config.checkpoint)
    meta = source.meta
    device = resolve_device(config.device, Dist(), config.threads)
    workers = config.workers or torch.get_num_threads()
    images = _load_images(config, meta, workers)
    val_arrays, val_targets = images.val_arrays(meta.spec.crop), images.labels[images.val]
    reference = _logits(source.model.eval().to(device), val_arrays, device)

    prepared = prepare(copy.deepcopy(source.model), config.target, meta.spec.crop).to(device)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    criterion = _criterion(meta, images, device)
    config.out.mkdir(parents=True, exist_ok=True)
    log = config.out / "log.jsonl"
    log.write_text("")
    history = []
    with ThreadPoolExecutor(workers) as pool:
        for epoch in range(1, config.epochs + 1):
            record = _train_epoch(prepared, images, epoch, config, meta, optimizer, criterion, pool, device)
            scheduler.step()
            set_mode(prepared, training=False)
            record["val"] = _scores(_logits(prepared, val_arrays, device), val_targets, reference, criterion)
            history.append(record)
            with open(log, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if config.progress and len(val_targets):
                print(f"qat epoch {epoch}: train loss {record['train_loss']:.3f} acc {record['train_acc']:.1%} | validation "
                      f"{record['val']['accuracy']:.1%}, agrees with the float model on {record['val']['agreement']:.1%}",
                      file=sys.stderr)  # fmt: skip

    set_mode(prepared, training=False)
    prepared = prepared.cpu()
    folder = images.folder
    metrics = {
        "epochs": history,
        "train_images": len(images.train),
        "float_val": _scores(reference, val_targets, reference, criterion),
        "fake_quant_val": history[-1]["val"],
        "bad_images": [
            {"path": folder.samples[i].path.relative_to(folder.root).as_posix(), "reason": reason}
            for i, reason in sorted(images.decoded.bad.items())
        ],
        "wall_time_s": round(time.perf_counter() - started, 2),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    out_meta = CheckpointMeta(meta.arch, list(meta.labels), dict(meta.preprocess), args=config.to_dict(), metrics=metrics,
                              data=dict(meta.data or {}), qat=_record(config, source, images))  # fmt: skip
    path = save_checkpoint(config.out / CHECKPOINT_NAME, prepared, out_meta)
    atomic_write_json(config.out / "metrics.json", metrics)
    return QatResult(path, metrics, FakeQuantModel(prepared))


def _record(config: QatConfig, source, images: _Images) -> dict:
    """CheckpointMeta.qat: what export needs to rebuild the graph and refuse other targets, and where it came from."""
    from dermmobile.data import calibration_record
    from dermmobile.targets.base import package_version

    meta = source.meta
    trained_on = [images.folder.samples[i] for i in images.train]
    learned_on = calibration_record(trained_on, images.folder.classes, images.folder.root, config.seed).as_dict()
    return {
        "format": QAT_FORMAT,
        "target": config.target,
        "quantization": "int8",
        "quantizer": _describe_quantizer(config.target),
        "source_checkpoint": str(config.checkpoint),
        "source_checkpoint_sha256": source.file_sha256,
        "source_metrics": {k: meta.metrics[k] for k in ("val", "test") if k in (meta.metrics or {})},
        "capture": {"input": [2, 3, meta.spec.crop, meta.spec.crop], "dynamic_batch": True, "mode": "train"},
        "schedule": {k: getattr(config, k) for k in ("epochs", "lr", "freeze_bn_after", "freeze_observers_after", "seed")},
        # Where the int8 ranges were learned: a QAT artifact's manifest gives this as its calibration.
        "calibration": learned_on | {"method": "quantization-aware training"},
        "toolchain": {name: package_version(name) for name in ("torch", "torchao", _converter(config.target))},
    }


def _logits(model, arrays: np.ndarray, device, batch_size: int = 32) -> np.ndarray:
    """Logits in batches; a prepared graph must be in its inference form already (set_mode)."""
    with torch.no_grad():
        outputs = [
            model(torch.from_numpy(arrays[i : i + batch_size]).to(device)).cpu() for i in range(0, len(arrays), batch_size)
        ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)


def _scores(logits: np.ndarray, targets: np.ndarray, reference: np.ndarray, criterion) -> dict:
    """Validation loss (the training criterion), accuracy, and agreement with the float model's answers."""
    if not len(targets):
        return {"images": 0}
    weight = None if criterion.weight is None else criterion.weight.cpu()
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), weight=weight).item()
    predicted = logits.argmax(1)
    return {"images": len(targets), "loss": loss, "accuracy": float((predicted == targets).mean()),
            "agreement": float((predicted == reference.argmax(1)).mean())}  # fmt: skip


def _converter(target: str) -> str:
    return {"tflite": "litert-torch", "executorch": "executorch"}.get(target, target)


def _describe_quantizer(target: str) -> dict:
    quantizer = qat_quantizer(target)
    config = quantizer.global_config
    return {
        "class": type(quantizer).__name__,
        "weights": f"{config.weight.dtype} {config.weight.qscheme}",
        "activations": f"{config.input_activation.dtype} {config.input_activation.qscheme}",
        "is_qat": bool(config.is_qat),
    }


# -- export -------------------------------------------------------------------------------------


def check_export(meta, targets: list, quantize: str, calib_data: Path | None) -> None:
    """Refuse to export a QAT checkpoint to anything but the target and int8 it was trained for."""
    if not meta.qat:
        return
    trained = meta.qat.get("target")
    names = [t.name for t in targets]
    if quantize != "int8" or names != [trained]:
        raise BadInputError(
            f"this checkpoint was quantization-aware trained for {trained} int8, so it exports only with "
            f"--target {trained} --quantize int8 (asked: --target {','.join(names)} --quantize {quantize}). "
            f"For other targets or quantizations, export the float checkpoint it came from ({meta.qat.get('source_checkpoint')})"
        )
    if calib_data is not None:
        raise BadInputError(
            "a QAT checkpoint carries the int8 ranges it learned in training, so --calib-data would not be used: "
            "drop it (give --check-data to choose the images parity is checked on)"
        )


def manifest_notes(meta) -> dict:
    """What a QAT artifact's manifest says about where its int8 parameters came from."""
    record = meta.qat
    return {
        "qat": {
            "source_checkpoint_sha256": record.get("source_checkpoint_sha256"),
            "schedule": record.get("schedule"),
            "quantizer": record.get("quantizer"),
            "parity_reference": "the QAT fake-quantize model (compare with the source float checkpoint in `dermmobile bench`)",
        }
    }
