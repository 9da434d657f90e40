"""Quantization-aware training (QAT): fine-tune a checkpoint with fake quantization for one target's int8.

Why: post-training int8 of a fine-tuned 27-class model flips near-ties (93-96 % agreement
on sd198-27). QAT trains the weights against int8 rounding instead of hoping they survive it.

How, with PT2E as torchao documents it:
1. The checkpoint's model is captured by torch.export in training form (batch dimension
   dynamic) and prepared by `prepare_qat_pt2e` with the target's own int8 quantizer in its
   QAT form (`targets/pt2e.build_quantizer(target.pt2e_toolchain, qat=True)`): the same
   annotation as the target's int8 export, with fake-quantize observers (histogram
   ranges) in place of calibration. Each batch norm gets its module's eps back
   (restore_batch_norm_eps: torchao writes 1e-5, EfficientNet-Lite uses 1e-3), and each
   int8 layer, add and requantize computes its value with the runtime's integer arithmetic
   (quantization/integer_forward.py, gradients straight through; convert_pt2e gets the graph
   without it).
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
the fake-quantize model. A QAT checkpoint exports only to the target and int8 it was trained
for, without bias correction or the accuracy-aware fallback (`export_options` says why).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermmobile.errors import BadInputError, MissingBackendError
from dermmobile.qat_config import QatConfig
from dermmobile.quantization import integer_forward
from dermmobile.targets.pt2e import BN_EPS, BN_RUNNING_VAR, BN_TRAINING, DROPOUT_TRAIN

# v2: batch norms with their own eps and histogram activation ranges; v1 graphs (eps 1e-5) were another model.
QAT_FORMAT = "dermmobile-qat-v2"
CHECKPOINT_NAME = "qat.safetensors"


class FakeQuantModel(nn.Module):
    """A QAT-prepared graph behind the ordinary module interface the trainer and every runner use.

    Exported graphs refuse eval()/train(): they cannot switch batch norm and dropout by
    themselves. Here train(mode) moves the graph between its training and inference forms
    (set_mode), with batch norm frozen and observers on as the epoch's schedule says. A model
    rebuilt from a checkpoint is in inference form: batch norm on running statistics,
    observers off, fake quantization on.
    """

    def __init__(self, prepared, bn_frozen: bool = True, observing: bool = False):
        super().__init__()
        self.prepared = prepared
        self.bn_frozen, self.observing = bn_frozen, observing
        self.train(False)

    def forward(self, x):
        return self.prepared(x)

    def train(self, mode: bool = True):
        set_mode(self.prepared, training=mode, bn_frozen=self.bn_frozen, observing=self.observing)
        self.training = mode  # not passed down: the graph's own train() raises
        return self


# -- the prepared graph -----------------------------------------------------------------------


def qat_targets() -> list[str]:
    """Targets whose int8 export is PT2E (they name a pt2e_toolchain), in registry order."""
    from dermmobile.targets import get_target, target_names

    return [name for name in target_names() if getattr(get_target(name), "pt2e_toolchain", None)]


def qat_quantizer(target: str, float_layers=frozenset()):
    """The target's int8 quantizer in its QAT form (`float_layers` left unannotated), or a clear error where its
    converter is missing."""
    from dermmobile.targets import get_target
    from dermmobile.targets.pt2e import build_quantizer

    if target not in qat_targets():
        raise BadInputError(
            f"quantization-aware training is for targets whose int8 is PT2E: {', '.join(qat_targets())}; got {target!r}"
        )
    chosen = get_target(target)
    try:
        return build_quantizer(chosen.pt2e_toolchain, float_layers, qat=True)
    except ImportError as exc:
        raise MissingBackendError(
            f"{target} QAT needs its quantizer ({exc}). Install it with: pip install 'dermmobile[{chosen.extra}]'"
        ) from exc


def prepare(model, target: str, crop: int, float_layers=frozenset()):
    """Capture `model` in training form (dynamic batch) and insert the target's fake quantizers, none on `float_layers`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = qat_quantizer(target, frozenset(float_layers))
    model = model.cpu().train()
    # Zeros, not an image: the capture then depends on nothing but the model and the crop.
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False).module()
    prepared = prepare_qat_pt2e(graph, quantizer)
    restore_batch_norm_eps(prepared, model)
    integer_forward.emulate(prepared, target)
    return prepared


def restore_batch_norm_eps(prepared, model) -> int:
    """Give every batch norm of the QAT graph the eps of its module in `model`; return how many batch norms.

    torchao's QAT conv + batch-norm pattern writes eps = 1e-5 into the graph whatever the
    module says (qat_utils: "TODO: allow setting eps"), in the batch norm call and in the
    running-std term that scales the weight before its fake quantizer; convert_pt2e then folds
    with that eps too. EfficientNet-Lite's batch norms use 1e-3: on the sd198-27 Lite0 the
    prepared graph with fake quantization off sat 0.29 (mean |logit difference|) from the float
    model it was made from, as far as int8 itself, so QAT spent its epochs undoing it.
    Every batch norm must be found: a graph that computes something else is refused.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    eps_of = {f"{name}.running_var": module.eps for name, module in model.named_modules() if isinstance(module, _BatchNorm)}
    restored = 0
    for node in prepared.graph.nodes:
        if node.op != "get_attr" or node.target not in eps_of:
            continue
        eps = eps_of[node.target]
        for user in list(node.users):
            if user.target == torch.ops.aten.batch_norm.default:
                user.update_arg(BN_EPS, eps)
                restored += 1
            elif user.target == torch.ops.aten.add.Tensor and isinstance(user.args[1], float):
                user.update_arg(1, eps)
    norms = sum(1 for node in prepared.graph.nodes if node.target == torch.ops.aten.batch_norm.default)
    if restored != norms:
        raise RuntimeError(f"the QAT graph has {norms} batch norms but {restored} were traced to the model's modules")
    prepared.recompile()
    return restored


@contextmanager
def folding_with_graph_eps(prepared):
    """Inside: convert_pt2e folds each batch norm of `prepared` with the eps its graph holds.

    convert_pt2e first swaps each QAT conv + batch-norm pattern for a plain conv + batch norm
    whose eps is again the pattern's 1e-5, then folds that (qat_utils._fold_conv_bn_qat_helper);
    the batch norm is known by its running-variance input, so the fold is handed the eps the
    QAT graph trained with (restore_batch_norm_eps) before it runs.
    """
    from torchao.quantization.pt2e import qat_utils

    eps_of = {node.args[BN_RUNNING_VAR].target: node.args[BN_EPS] for node in prepared.graph.nodes
              if node.target == torch.ops.aten.batch_norm.default and node.args[BN_RUNNING_VAR].op == "get_attr"}  # fmt: skip
    original = qat_utils.fold_bn_weights_into_conv_node

    def fold(conv_node, conv_weight_node, conv_bias_node, bn_node, m, *args, **kwargs):
        running_var = bn_node.args[BN_RUNNING_VAR]
        if running_var.op == "get_attr" and running_var.target in eps_of:
            bn_node.update_arg(BN_EPS, eps_of[running_var.target])
        return original(conv_node, conv_weight_node, conv_bias_node, bn_node, m, *args, **kwargs)

    qat_utils.fold_bn_weights_into_conv_node = fold
    try:
        yield
    finally:
        qat_utils.fold_bn_weights_into_conv_node = original


def set_mode(prepared, training: bool, bn_frozen: bool = True, observing: bool = False) -> None:
    """Training or inference form of the graph; observers learn ranges only when asked (never on evaluation images).

    The training flags of the graph's batch norm and dropout calls are set in place (batch
    norm trains only when not `bn_frozen`; frozen, it normalises with its running statistics,
    as the converted int8 graph will). Not torchao's move_exported_model_to_train/eval: they
    swap those calls for pattern copies whose literals are the pattern's own (eps 1e-5,
    dropout p 0.5), not the model's.
    """
    from torchao.quantization.pt2e import disable_observer, enable_observer

    for node in prepared.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten.batch_norm.default:
            node.update_arg(BN_TRAINING, training and not bn_frozen)
        elif node.target == torch.ops.aten.dropout.default:
            node.update_arg(DROPOUT_TRAIN, training)
        elif node.target is integer_forward.layer_as_runtime:
            node.update_arg(integer_forward.BATCH_STATISTICS, training and not bn_frozen)
    prepared.recompile()
    prepared.apply(enable_observer if training and observing else disable_observer)


def rebuild_qat_model(meta, state: dict, path: Path) -> FakeQuantModel:
    """The fake-quantize model of a QAT checkpoint: the same graph prepared again, its saved state loaded."""
    from dermmobile.models import build_model
    from dermmobile.targets.base import package_version

    record = meta.qat
    if not isinstance(record, dict) or record.get("format") != QAT_FORMAT or not isinstance(record.get("target"), str):
        raise BadInputError(f"{path}: its qat metadata is not a {QAT_FORMAT} record; re-run `dermmobile qat`")
    prepared = prepare(build_model(meta.arch, len(meta.labels), weights="none"), record["target"], meta.spec.crop,
                       recorded_float_layers(meta, path))  # fmt: skip
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


def recorded_float_layers(meta, path) -> frozenset[str]:
    """The layers a QAT checkpoint trained in float (none in checkpoints made before float_layers was recorded)."""
    layers = meta.qat.get("float_layers", [])
    if not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
        raise BadInputError(f"{path}: its qat metadata's float_layers is not a list of layer names; re-run `dermmobile qat`")
    return frozenset(layers)


def recorded_float_macs_share(meta) -> float | None:
    """The MAC share of those layers, measured on the float model QAT started from (None: not recorded or not a share)."""
    share = meta.qat.get("float_macs_share")
    return float(share) if isinstance(share, int | float) and not isinstance(share, bool) and 0 <= share <= 1 else None


# -- which images QAT may train on --------------------------------------------------------------


def training_split(folder, meta) -> tuple[list[int], list[int]]:
    """(train, validation) sample indices of the checkpoint's own split; its held-out test files never appear.

    data.held_out decides what is held out (the recorded test files); the recorded validation
    files stay out of training too. A checkpoint that records no test files gets the default
    split (export and bench then treat every image as seen). Another folder is refused: its
    images would count as unseen for every later evaluation.
    """
    from dermmobile.data import held_out, stratified_split

    held = held_out(folder, meta.data)
    if held.split == "all" and held.unseen:
        raise BadInputError(
            f"{folder.root} is not the folder the checkpoint was trained on ({(meta.data or {}).get('root')}): QAT trains on "
            "the checkpoint's own training split, whose held-out test files it knows. Pass that folder as --data"
        )
    if held.split != "test":
        split = stratified_split(folder.samples)
        return split.train, split.val
    names = [s.path.relative_to(folder.root).as_posix() for s in folder.samples]
    test = {s.path.relative_to(folder.root).as_posix() for s in held.samples}
    val = set(map(str, (meta.data or {}).get("val_files") or []))
    return [i for i, n in enumerate(names) if n not in test and n not in val], [i for i, n in enumerate(names) if n in val]


@dataclass
class QatResult:
    checkpoint: Path
    metrics: dict
    model: FakeQuantModel


def recipe(meta, config: QatConfig):
    """The checkpoint's own training recipe (batch size, augmentation, loss, SGD settings) for the QAT epochs.

    Only the epochs, the learning rate and the seed are QAT's own; a checkpoint that records
    no arguments gets the trainer's defaults.
    """
    from dataclasses import fields

    from dermmobile.train_config import AugmentConfig, TrainConfig

    recorded = dict(meta.args or {})
    known = {f.name for f in fields(TrainConfig)} - {"data", "arch", "out", "spec", "augment", "on_epoch_end"}
    kept = {k: v for k, v in recorded.items() if k in known}
    try:
        augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (recorded.get("augment") or {}).items()})
        train = TrainConfig(data=Path(config.data or "."), arch=meta.arch, **kept, augment=augment, spec=meta.spec)
    except TypeError as exc:
        raise BadInputError(f"{config.checkpoint} records training arguments this dermmobile cannot use ({exc})") from None
    return replace(train, epochs=config.epochs, lr=config.lr, seed=config.seed, lr_decay="cosine", warmup_epochs=0.0,
                   freeze_backbone=False, folds=0, resume=False, progress=config.progress)  # fmt: skip


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


def train_qat(config: QatConfig) -> QatResult:
    """Fine-tune the checkpoint with fake quantization and save the QAT checkpoint (see the module docstring).

    The epochs run through the trainer's own pieces: its decoding, its batched augmentation
    (ImageBank, epoch_batches) and its epoch loop (train_one_epoch) with the model swapped for
    the fake-quantized graph.
    """
    from dermmobile.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
    from dermmobile.fsutil import atomic_write_json, ensure_output_dir
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
    train_config = recipe(meta, config)
    dist = Dist()
    device = resolve_device(config.device, dist, config.threads)
    images = _load_images(config, meta, config.workers or torch.get_num_threads())
    val = (images.val_arrays(meta.spec.crop), images.labels[images.val])
    reference = _logits(source.model, val[0], device)

    float_layers, float_macs_share = _float_layers(source.model, meta.spec.crop, config.float_logits)
    model = FakeQuantModel(prepare(copy.deepcopy(source.model), config.target, meta.spec.crop, float_layers).to(device))
    learner = _learner(model, source.model if config.loss == "distill" else None, images, config, train_config,
                       len(meta.labels), device)  # fmt: skip
    ensure_output_dir(config.out, "--out")
    history = _run_epochs(model, learner, images, config, train_config, meta.spec, dist, device, val, reference)
    model.bn_frozen, model.observing = True, False
    model = model.cpu().train(False)
    folder = images.folder
    metrics = {
        "epochs": history,
        "train_images": len(images.train),
        "float_val": _scores(reference, val[1], reference, learner.criterion),
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
                              data=dict(meta.data or {}),
                              qat=_record(config, train_config, source, images)
                              | {"float_layers": sorted(float_layers), "float_macs_share": float_macs_share})  # fmt: skip
    path = save_checkpoint(config.out / CHECKPOINT_NAME, model.prepared, out_meta)
    atomic_write_json(config.out / "metrics.json", metrics)
    return QatResult(path, metrics, model)


def _float_layers(model, crop: int, float_logits: bool) -> tuple[frozenset[str], float]:
    """The layers QAT leaves float (the logits layer, by the rule every int8 export uses:
    quantization/export.logits_layer) and their share of the model's MACs."""
    from dermmobile.quantization.export import logits_layer
    from dermmobile.quantization.simulate import float_share, model_layers

    if not float_logits:
        return frozenset(), 0.0
    layers = model_layers(copy.deepcopy(model), torch.zeros(1, 3, crop, crop))
    chosen = logits_layer(layers)
    return chosen, round(float_share(layers, chosen), 6)


def _learner(model, teacher, images: _Images, config: QatConfig, train_config, classes: int, device):
    """The trainer's Learner around the fake-quantized model: SGD at the QAT lr; the loss distils `teacher` (the
    float model) or, without one, is the float run's own label loss."""
    from dermmobile.trainer import Learner, class_weights

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=train_config.momentum,
                                weight_decay=train_config.weight_decay)  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    if teacher is not None:
        forward = Distilled(model, copy.deepcopy(teacher).to(device))
        return Learner(model, forward, model, optimizer, scaler, DistillLoss(forward), None, False)
    counts = np.bincount(images.labels[images.train], minlength=classes)
    weights = class_weights(counts).to(device) if train_config.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=train_config.label_smoothing)
    return Learner(model, model, model, optimizer, scaler, criterion, None, False)


class Distilled(nn.Module):
    """The student's forward, with the float teacher's logits of the same batch kept for DistillLoss."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student, self.teacher, self.teacher_logits = student, teacher.eval(), None

    def forward(self, x):
        with torch.no_grad():
            self.teacher_logits = self.teacher(x).float()
        return self.student(x)

    def train(self, mode: bool = True):
        self.student.train(mode)  # the teacher stays in inference form: the logits the int8 file must agree with
        self.training = mode
        return self


class DistillLoss(nn.Module):
    """KL divergence from the teacher's class probabilities to the student's, on the batch `forward` just ran."""

    weight = None  # validation losses (qat._scores) are plain cross-entropy

    def __init__(self, forward: Distilled):
        super().__init__()
        self.source = [forward]  # a list: not a submodule, so the teacher is not part of this loss's state

    def forward(self, logits, targets):
        teacher = self.source[0].teacher_logits
        return nn.functional.kl_div(logits.log_softmax(1), teacher.log_softmax(1), log_target=True, reduction="batchmean")


def _run_epochs(model, learner, images: _Images, config: QatConfig, train_config, spec, dist, device, val,
                reference) -> list[dict]:  # fmt: skip
    """The QAT epochs (cosine lr; batch norm and observers frozen on schedule), each logged to log.jsonl."""
    from dermmobile.augment import ImageBank
    from dermmobile.fsutil import append_text, atomic_write_text
    from dermmobile.trainer import epoch_batches, epoch_order, train_one_epoch

    augment = train_config.augment
    bank = ImageBank.build([images.decoded.train[i] for i in images.train], list(images.labels[images.train]),
                           landscape=augment.quarter_turns and (augment.hflip or augment.vflip)).place(device)  # fmt: skip
    steps = math.ceil(len(images.train) / train_config.batch_size)
    total = steps * config.epochs

    def lr_of_step(step: int) -> float:
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / total))

    log = config.out / "log.jsonl"
    atomic_write_text(log, "")  # a new run's log; never written through a planted link
    history = []
    for epoch in range(1, config.epochs + 1):
        model.bn_frozen = epoch > config.freeze_bn_after
        model.observing = epoch <= config.freeze_observers_after
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout draws
        order = epoch_order(len(images.train), dist, config.seed, epoch)
        batches = epoch_batches(bank, order, train_config, spec, epoch, dist.rank, device)
        desc = f"qat epoch {epoch}/{config.epochs}" if config.progress else None
        stats = train_one_epoch(learner, batches, lr_of_step, (epoch - 1) * steps, desc)
        record = {"epoch": epoch, "lr": stats.lr, "bn_frozen": model.bn_frozen, "observers": model.observing,
                  "train_loss": stats.loss, "train_acc": stats.accuracy, "time_s": round(stats.seconds, 2),
                  "img_per_s": round(stats.images / stats.seconds, 2)}  # fmt: skip
        model.train(False)
        record["val"] = _scores(_logits(model, val[0], device), val[1], reference, learner.criterion)
        history.append(record)
        append_text(log, json.dumps(record) + "\n")
        if config.progress and len(val[1]):
            print(f"qat epoch {epoch}: train loss {stats.loss:.3f} acc {stats.accuracy:.1%} | validation "
                  f"{record['val']['accuracy']:.1%}, agrees with the float model on {record['val']['agreement']:.1%}",
                  file=sys.stderr)  # fmt: skip
    return history


def _record(config: QatConfig, train_config, source, images: _Images) -> dict:
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
        "schedule": {k: getattr(config, k) for k in ("epochs", "lr", "freeze_bn_after", "freeze_observers_after", "seed", "loss")}
        | {"batch_size": train_config.batch_size, "augment": train_config.augment.to_dict(), "balance": train_config.balance},
        # Where the int8 ranges were learned: a QAT artifact's manifest gives this as its calibration.
        "calibration": learned_on | {"method": "quantization-aware training"},
        "toolchain": {name: package_version(name) for name in ("torch", "torchao", _converter(config.target))},
    }


def _logits(model, arrays: np.ndarray, device) -> np.ndarray:
    from dermmobile.evaluate import predict_logits

    return predict_logits(model, arrays, device, batch_size=32)


def _scores(logits: np.ndarray, targets: np.ndarray, reference: np.ndarray, criterion) -> dict:
    """Validation cross-entropy (with the label loss's class weights, if it trains on labels), accuracy, and agreement
    with the float model's answers."""
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


def check_export(meta, targets: list, quantize: str, calib_data: Path | None, int8) -> None:
    """Refuse to export a QAT checkpoint to anything but the target and int8 it was trained for, or with
    options it would not use (`int8`: the Int8Options asked for)."""
    trained = meta.qat.get("target")
    names = [t.name for t in targets]
    if quantize != "int8" or names != [trained]:
        raise BadInputError(
            f"this checkpoint was quantization-aware trained for {trained} int8, so it exports only with "
            f"--target {trained} --quantize int8 (asked: --target {','.join(names)} --quantize {quantize}). "
            f"For other targets or quantizations, export the float checkpoint it came from ({meta.qat.get('source_checkpoint')})"
        )
    unused = [flag for flag, given in (("--calib-data", calib_data is not None), ("--observer", bool(int8.observer)),
                                       ("--explain", int8.explain)) if given]  # fmt: skip
    if unused:
        raise BadInputError(
            f"a QAT checkpoint carries the int8 ranges it learned in training, so {' and '.join(unused)} would not be "
            "used: drop them (give --check-data to choose the images the artifact is judged on)"
        )


def export_options():
    """The int8 options of a QAT checkpoint's export: the trained graph converted as it is.

    No bias correction and no GPTQ rounding: QAT trained every weight through its nearest int8
    rounding (the fake-quantize forward), so there is no rounding shift left to give back; a corrected bias would make the
    int8 file compute something the QAT model never did, and the file is judged by agreement
    with that model (>= 99 % is what QAT is for). No accuracy-aware fallback: a layer left
    float would run weights trained to be rounded without their rounding, and its neighbours'
    ranges were learned around an int8 layer, so the file would again be neither the QAT model
    nor the float one. The layers QAT trained in float (the logits layer unless
    `QatConfig.float_logits` is off) stay float: quantization/export.always_float. When a QAT
    artifact fails its gate, the remedy is more QAT epochs (or a lower --lr), or the fallback
    from the float checkpoint QAT started from; the manifest says so.
    """
    from dermmobile.quantization.options import Int8Options

    return Int8Options(fallback=False, bias_correction=False, weight_rounding="nearest", tune_count=0, float_logits=False)


def manifest_record(meta, int8) -> dict:
    """Manifest.qat of a QAT artifact: where its int8 parameters came from and what export left out."""
    record = meta.qat
    return {
        "target": record.get("target"),
        "source_checkpoint_sha256": record.get("source_checkpoint_sha256"),
        "source_metrics": record.get("source_metrics"),
        "schedule": record.get("schedule"),
        "quantizer": record.get("quantizer"),
        "bias_correction": int8.bias_correction,
        "weight_rounding": int8.weight_rounding,
        "fallback": int8.fallback,
        "parity_reference": "the QAT fake-quantize model (compare with the source float checkpoint: benchmarks/qat.py)",
    }
