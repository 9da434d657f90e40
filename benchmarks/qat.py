"""Quantization-aware training against the default int8 export (accuracy-aware fallback), per PT2E target.

    .venv/bin/python benchmarks/qat.py --checkpoint runs/paper-protocol/efficientnet_lite0-full/best.safetensors

For each target (tflite, executorch): `dermmobile qat` on the checkpoint's training split,
`dermmobile export --quantize int8` of the QAT checkpoint (its learned ranges, nothing
re-calibrated), and, for comparison, the default `--quantize int8` export of the float
checkpoint with --calib-data its training folder (calibration, bias correction, and the
accuracy-aware fallback choosing float layers on tuning images: all training photos).
Then, on the checkpoint's held-out test photos (never used by QAT, calibration, tuning or
the float training), it compares:

- the QAT artifact with its own fake-quantize model (the issue's line: >= 99 % agreement), and
  where they part: convert_pt2e's graph run in torch against the fake-quantize model, then the file against it,
  and the file against that graph run with the runtime's integer arithmetic (quantization/integer_reference.py),
- the QAT and default int8 artifacts with the float checkpoint (agreement, flips with margins),
- top-1 accuracy of float, fake-quantize, QAT int8 and default int8 (QAT: <= 1 point lost),
- single-image latency of the two int8 artifacts, in alternating rounds.

Writes `qat-<arch>-<data>-<machine>.json/.md` into benchmarks/results. The QAT schedule
defaults to `dermmobile qat`'s own (dermmobile/qat_config.py). For efficientnet_lite0 on an
idle 2-core CPU, per target: about 1.5 minutes per QAT epoch (distillation runs the float
model too) and 5 for the default int8 export.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _results import machine_tag, write_result

from dermmobile.bench.latency import summarize, time_calls
from dermmobile.bench.sweep import machine_info, versions
from dermmobile.checkpoint import load_checkpoint
from dermmobile.data import held_out, load_images, scan_image_folder
from dermmobile.exporter import CheckImages, plan_export, run_plan
from dermmobile.parity import compare_logits
from dermmobile.qat import QatConfig, qat_targets, train_qat
from dermmobile.qat_config import LOSSES, cli_defaults
from dermmobile.quantization import integer_reference
from dermmobile.targets import get_target
from dermmobile.targets.base import batched
from dermmobile.targets.pt2e import converted_qat

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"


def held_out_photos(checkpoint, data: Path) -> CheckImages:
    """The float checkpoint's recorded held-out test photos: nothing below ever trained or calibrated on them."""
    folder = scan_image_folder(data, expected_classes=checkpoint.meta.labels)
    held = held_out(folder, checkpoint.meta.data, split="test")
    images = load_images(held.samples, checkpoint.meta.spec, folder.root, progress="test photos")
    # Marked unseen as the CLI's gate marks them: the default export's forecast weighs its population by that share.
    unseen = np.full(len(images.names), held.unseen, dtype=bool)
    return CheckImages(images.arrays, images.names, images.targets, f"{data} ({held.note})", unseen)


def default_int8(checkpoint, target: str, data: Path, out: Path, check: CheckImages, calib_count: int):
    """`dermmobile export --quantize int8 --calib-data DATA` of the float checkpoint, with every default on.

    Calibration and tuning images come from the training photos only (data.int8_splits); the
    artifact is then judged on the same held-out photos as the QAT artifact.
    """
    plan = plan_export(checkpoint, target, "int8", out, calib_data=data, calib_count=calib_count)
    plan.check = check
    (outcome,) = run_plan(checkpoint, plan)
    return outcome


def latency_ratio(runtimes: dict, image: np.ndarray, threads: int, rounds: int, iters: int) -> dict:
    """Milliseconds per runtime over alternating rounds (a loaded machine slows both alike), and the p50 ratio."""
    samples: dict[str, list[float]] = {name: [] for name in runtimes}
    for runtime in runtimes.values():
        time_calls(lambda runtime=runtime: runtime.predict(image), 5)  # warm-up
    for _ in range(rounds):
        for name, runtime in runtimes.items():
            samples[name] += time_calls(lambda runtime=runtime: runtime.predict(image), iters)
    stats = {name: summarize(values).to_dict() for name, values in samples.items()}
    first, second = list(runtimes)
    return {"threads": threads, "rounds": rounds, "iters_per_round": iters, "stats_ms": stats,
            "p50_ratio": stats[first]["p50"] / stats[second]["p50"], "ratio_of": f"{first} / {second}"}  # fmt: skip


def compare(reference: np.ndarray, candidate: np.ndarray, check: CheckImages, labels: list[str]) -> dict:
    report = compare_logits(reference, candidate, labels, check.names, check.targets).to_dict()
    report.pop("failures"), report.pop("passed")
    return report


def run_target(checkpoint, target: str, data: Path, work: Path, check: CheckImages, args) -> dict:
    labels = checkpoint.meta.labels
    schedule = {k: getattr(args, k) for k in ("epochs", "lr", "loss", "freeze_bn_after", "freeze_observers_after", "seed")}
    started = time.perf_counter()
    qat = train_qat(QatConfig(checkpoint.path, target, work / f"qat-{target}", data=data, **schedule))
    qat_seconds = time.perf_counter() - started
    qat_checkpoint = load_checkpoint(qat.checkpoint)
    plan = plan_export(qat_checkpoint, target, "int8", work / "export-qat")
    plan.check = check
    (outcome,) = run_plan(qat_checkpoint, plan)
    if not outcome.artifact:
        return {"target": target, "error": outcome.error}
    started = time.perf_counter()
    default = default_int8(checkpoint, target, data, work / "export-default", check, args.calib_count)
    default_seconds = time.perf_counter() - started
    loader = get_target(target).load
    graph = converted_qat(qat_checkpoint.model, fold_quantize=False)
    runtimes = {"qat_int8": loader(outcome.artifact.path, outcome.artifact.manifest, threads=args.threads)}
    if default.artifact:
        runtimes["default_int8"] = loader(default.artifact.path, default.artifact.manifest, threads=args.threads)
    logits = {
        "float": _torch(checkpoint.model, check.arrays),
        "fake_quant": _torch(qat_checkpoint.model, check.arrays),
        "converted": run_converted(graph, check.arrays),
        "integer": integer_reference.run(graph, check.arrays, target),
        **{name: batched(runtime.predict, check.arrays, 16) for name, runtime in runtimes.items()},
    }
    accuracy = {name: float((values.argmax(1) == check.targets).mean()) for name, values in logits.items()}
    manifest = outcome.artifact.manifest
    row = {
        "target": target,
        "qat": {"seconds": round(qat_seconds, 1)}
        | {k: qat.metrics[k] for k in ("train_images", "epochs", "float_val", "fake_quant_val")},
        "qat_artifact": {"file": manifest.file, "bytes": manifest.bytes, "status": manifest.status, "seconds": outcome.seconds},
        "default_artifact": _default_record(default, default_seconds),
        "accuracy": accuracy,
        "points_lost_vs_float": {name: round((accuracy["float"] - accuracy[name]) * 100, 2) for name in accuracy},
        "qat_int8_vs_fake_quant": compare(logits["fake_quant"], logits["qat_int8"], check, labels),
        "qat_int8_vs_float": compare(logits["float"], logits["qat_int8"], check, labels),
        "fake_quant_vs_float": compare(logits["float"], logits["fake_quant"], check, labels),
        # Where the file parts from its fake-quant model: convert_pt2e's graph (batch norm folded, integer grids)
        # run by torch's float quantize/dequantize ops, and the same graph with the runtime's integer arithmetic.
        "converted_vs_fake_quant": compare(logits["fake_quant"], logits["converted"], check, labels),
        "qat_int8_vs_converted": compare(logits["converted"], logits["qat_int8"], check, labels),
        "qat_int8_vs_integer": compare(logits["integer"], logits["qat_int8"], check, labels),
    }
    row["meets_issue"] = {
        "agreement_with_fake_quant_ge_99": row["qat_int8_vs_fake_quant"]["agreement"] >= 0.99,
        "points_lost_vs_float_le_1": row["points_lost_vs_float"]["qat_int8"] <= 1.0,
    }
    if "default_int8" in logits:
        row["default_int8_vs_float"] = compare(logits["float"], logits["default_int8"], check, labels)
        row["latency"] = latency_ratio(runtimes, check.arrays[:1], args.threads, args.rounds, args.iters)
    return row


def run_converted(graph, arrays: np.ndarray) -> np.ndarray:
    """A converted graph's logits, run in torch one image at a time (the graph is batch 1)."""
    import torch

    with torch.no_grad():
        return np.concatenate([graph(torch.from_numpy(image[None])).numpy() for image in arrays])


def _default_record(outcome, seconds: float) -> dict:
    """What the default int8 export chose (float layers, their MAC share, attempts) and what it cost."""
    if not outcome.artifact:
        return {"error": outcome.error, "seconds": round(seconds, 1)}
    manifest = outcome.artifact.manifest
    fallback = manifest.fallback or {}
    return {
        "file": manifest.file,
        "seconds": round(seconds, 1),
        "error": outcome.error,  # a failed gate keeps its artifact: it is still compared
        "float_layers": manifest.float_layers,
        "float_macs_share": manifest.float_macs_share,
        "attempts": len(fallback.get("attempts") or []),
        "passed_tuning": fallback.get("passed_tuning"),
        "calibration": manifest.calibration,
        "tuning_images": (manifest.tuning_images or {}).get("count"),
    }


def _torch(model, arrays: np.ndarray) -> np.ndarray:
    from dermmobile.targets.base import TorchRuntime

    return batched(TorchRuntime(model).predict, arrays, 16)


COLUMNS = ["target", "QAT int8 vs its fake-quant model", "QAT int8 vs float", "default int8 vs float", "top-1 float",
           "fake-quant", "QAT int8", "default int8", "points lost (QAT int8)", "default int8: float MACs",
           "p50 QAT / default"]  # fmt: skip


def _agreement(part: dict | None) -> str:
    return f"{part['agreement']:.1%} ({len(part['flips'])} flips)" if part else "-"


def _row(row: dict) -> list[str]:
    if "error" in row:
        return [row["target"], f"error: {row['error'][:200]}"] + [""] * (len(COLUMNS) - 2)
    acc = row["accuracy"]
    return [
        row["target"],
        _agreement(row["qat_int8_vs_fake_quant"]),
        _agreement(row["qat_int8_vs_float"]),
        _agreement(row.get("default_int8_vs_float")),
        *[f"{acc[name]:.1%}" if name in acc else "-" for name in ("float", "fake_quant", "qat_int8", "default_int8")],
        f"{row['points_lost_vs_float']['qat_int8']:+.1f}",
        _float_share(row["default_artifact"]),
        f"{row['latency']['p50_ratio']:.2f}" if "latency" in row else "-",
    ]


def _float_share(record: dict) -> str:
    if record.get("float_macs_share") is None:
        return "-"
    return f"{record['float_macs_share']:.1%} ({len(record['float_layers'])} layers, {record['attempts']} attempts)"


def _gap_line(row: dict) -> str:
    steps = [
        ("convert_pt2e vs fake-quant", row["converted_vs_fake_quant"]),
        ("file vs convert_pt2e", row["qat_int8_vs_converted"]),
        ("file vs fake-quant", row["qat_int8_vs_fake_quant"]),
        ("file vs integer reference", row["qat_int8_vs_integer"]),
    ]
    parts = [f"{what} {part['mean_abs_logit']:.4f}, {part['agreement']:.1%}" for what, part in steps]
    return f"- {row['target']}: " + "; ".join(parts)


def _epoch_line(target: str, epoch: dict) -> str:
    val = epoch["val"]
    state = f"BN {'frozen' if epoch['bn_frozen'] else 'updating'}, observers {'on' if epoch['observers'] else 'frozen'}"
    return (
        f"- {target} epoch {epoch['epoch']}: lr {epoch['lr']:.2g}, {state}; train loss {epoch['train_loss']:.3f}; "
        f"validation top-1 {val['accuracy']:.1%}, agreement with float {val['agreement']:.1%}; {epoch['img_per_s']} img/s"
    )


def markdown(report: dict) -> str:
    machine = report["machine"]
    settings = report["settings"]
    lines = [
        f"# QAT vs the default int8 export: {report['arch']} on {report['data_name']} "
        f"({machine['cores']}-core {machine['arch']})",
        "",
        f"{report['test_images']} held-out test photos, never used by QAT, calibration, tuning or the float training. "
        f"QAT: {settings['epochs']} epoch(s) over {report['train_images']} training photos, "
        f"loss {settings.get('loss', 'labels')}, lr {settings['lr']}, "
        f"batch norm updating for {settings['freeze_bn_after']}, observers for {settings['freeze_observers_after']}. "
        f"Default int8: --calib-count {settings['calib_count']}, bias correction and fallback on.",
        "",
        f"CPU: {machine['cpu']}; load average at start {machine['load_average_1_5_15min']}, "
        f"at end {report['load_average_at_end']}. {report['note']}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *["| " + " | ".join(_row(row)) + " |" for row in report["targets"]],
        "",
        "Where the QAT int8 file parts from its fake-quant model (mean |logit difference|, top-1 agreement):",
        "",
        *[_gap_line(row) for row in report["targets"] if "qat_int8_vs_integer" in row],
        "",
        "QAT per epoch (validation photos of the float checkpoint's own split):",
        "",
        *[_epoch_line(row["target"], epoch) for row in report["targets"] for epoch in row.get("qat", {}).get("epochs", [])],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a float checkpoint from `dermmobile train`")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--targets", nargs="+", default=None, help="default: every target QAT supports")
    default = cli_defaults()  # `dermmobile qat`'s own defaults
    parser.add_argument("--epochs", type=int, default=default["epochs"])
    parser.add_argument("--lr", type=float, default=default["lr"])
    parser.add_argument("--loss", choices=LOSSES, default=default["loss"])
    parser.add_argument("--freeze-bn-after", type=int, default=default["freeze_bn_after"])
    parser.add_argument("--freeze-observers-after", type=int, default=default["freeze_observers_after"])
    parser.add_argument("--seed", type=int, default=default["seed"], help="QAT's seed (augmentation, batch order)")
    parser.add_argument("--calib-count", type=int, default=128, help="default int8: calibration photos (the CLI's default)")
    parser.add_argument("--threads", type=int, default=2, help="latency: runtime threads")
    parser.add_argument("--rounds", type=int, default=5, help="latency: alternating rounds")
    parser.add_argument("--iters", type=int, default=20, help="latency: timed calls per runtime per round")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-qat"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--note", default="", help="how the machine was used meanwhile (written into the report)")
    args = parser.parse_args(argv)

    machine = machine_info()
    checkpoint = load_checkpoint(args.checkpoint)
    check = held_out_photos(checkpoint, args.data)
    rows = [run_target(checkpoint, target, args.data, args.work, check, args) for target in (args.targets or qat_targets())]
    report = {
        "arch": checkpoint.meta.arch,
        "checkpoint": str(args.checkpoint),
        "checkpoint_metrics": {k: checkpoint.meta.metrics.get(k) for k in ("val", "test")},
        "data": str(args.data),
        "data_name": args.data.name,
        "test_images": len(check.names),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "load_average_at_end": machine_info()["load_average_1_5_15min"],
        "note": args.note,
        "train_images": next((row["qat"]["train_images"] for row in rows if "qat" in row), None),
        "versions": versions(),
        "targets": rows,
    }
    stem = f"qat-{checkpoint.meta.arch}-{args.data.name}-{machine_tag()}" + (f"-seed{args.seed}" if args.seed else "")
    write_result(args.out, stem, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
