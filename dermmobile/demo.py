"""`dermmobile demo`: the whole pipeline on an embedded default, end to end, in a few minutes.

Synthetic data with the paper's nine class names -> train a small model -> export it to
every target and quantization -> bench every artifact. Every output says SYNTHETIC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dermmobile.synthetic import SYNTHETIC_NOTE


@dataclass
class DemoConfig:
    out: Path = Path("demo-output")
    arch: str = "tiny_cnn"
    # 30, not 12: on a 2-core AMD EPYC the 12-epoch model (61 % train accuracy) sat so near its ties that TFLite and
    # ExecuTorch int8 each flipped 1 of the 27 gate images and failed; at 30 (0.1 s each) every gate passed.
    epochs: int = 30
    per_class: int = 16
    image_size: int = 64  # crop; synthetic patterns need no more, and every conversion stays fast
    targets: str = "all"
    quantizations: tuple[str, ...] = ("none", "fp16", "int8-dynamic", "int8")
    bench_iters: int = 20
    seed: int = 0


def run_demo(config: DemoConfig) -> dict:
    from dermmobile.augment import AugmentConfig
    from dermmobile.chatter import to_log
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.errors import BadInputError
    from dermmobile.exporter import converter_log, plan_export, run_plan
    from dermmobile.fsutil import atomic_write_json, ensure_output_dir
    from dermmobile.preprocess import PreprocessSpec
    from dermmobile.synthetic import make_synthetic_dataset
    from dermmobile.targets import target_names, valid_combinations
    from dermmobile.trainer import TrainConfig, train

    out = ensure_output_dir(Path(config.out), "--out")
    started = time.perf_counter()
    summary: dict = {"note": SYNTHETIC_NOTE, "out": str(out)}

    print(f"[1/4] writing synthetic data ({SYNTHETIC_NOTE})")
    data = make_synthetic_dataset(out / "data", per_class=config.per_class, size=96, seed=config.seed)

    print(f"[2/4] training {config.arch} for up to {config.epochs} epochs on {data}")
    spec = PreprocessSpec(resize=round(config.image_size * 256 / 224), crop=config.image_size)
    # Mild augmentation: the synthetic classes are small patterns that big crops would cut away.
    augment = AugmentConfig(scale=(0.7, 1.0), rotation=0.0, brightness=0.1, contrast=0.1, saturation=0.1)
    result = train(
        TrainConfig(data=data, arch=config.arch, out=out / "run", weights="none", epochs=config.epochs, lr=0.05,
                    lr_decay="cosine", patience=config.epochs, seed=config.seed, spec=spec, augment=augment)
    )  # fmt: skip
    summary["train"] = {"checkpoint": str(result.checkpoint), "test_accuracy": result.metrics.get("test_accuracy")}

    export_dir = out / "export"
    print("[3/4] exporting to every target and quantization (parity checked on the held-out synthetic split)")
    print(f"      converter and runtime output goes to {converter_log(export_dir)}")
    checkpoint = load_checkpoint(result.checkpoint)
    exports = []
    combos = valid_combinations()
    for quantize in config.quantizations:
        names = [n for n in (target_names() if config.targets == "all" else config.targets.split(",")) if quantize in combos[n]]
        if not names:
            continue
        plan = plan_export(
            checkpoint, names, quantize, export_dir, calib_data=data if quantize == "int8" else None, calib_count=36
        )
        for outcome in run_plan(checkpoint, plan):
            status = outcome.artifact.manifest.status if outcome.artifact else "error"
            if outcome.artifact is None and outcome.exit_code == BadInputError.exit_code:
                status = "refused"  # a combination this model should not use (onnx int8-dynamic on a CNN), said why
            exports.append({"target": outcome.target, "quantization": quantize, "status": status, "error": outcome.error})
            print(f"  {outcome.target:<12} {quantize:<13} {status}{': ' + outcome.error if outcome.error else ''}")
    summary["exports"] = exports

    print("[4/4] benchmarking every artifact against the PyTorch model")
    with to_log(converter_log(export_dir)):  # runtimes announce their delegates and kernels
        summary["bench"] = _bench(export_dir, result.checkpoint, data, out / "bench", config.bench_iters)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "demo-summary.json", summary)
    return summary


def _bench(export_dir: Path, checkpoint: Path, data: Path, out: Path, iters: int) -> dict:
    """Bench every exported artifact on the held-out synthetic split; returns the report's paths and problems."""
    from dermmobile.bench.report import write_reports
    from dermmobile.bench.sweep import BenchConfig, run_bench

    report = run_bench(
        BenchConfig(data=data, artifacts=export_dir, checkpoint=checkpoint, warmup=3, iters=iters, e2e_images=5, compile=False)
    )
    written = write_reports(report, out)
    return {
        "json": str(out / "bench.json"),
        "markdown": str(out / "bench.md"),
        "files": [str(p) for p in written],
        "problems": report.get("problems", []),
    }
