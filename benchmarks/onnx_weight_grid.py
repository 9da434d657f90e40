"""ONNX static int8 weight grids on this CPU: 7 bits for every layer against each layer's own grid (the default).

On x86 CPUs without VNNI onnxruntime's int8 GEMM can saturate, so its layers get 7-bit
weights (dermmobile/targets/onnx.py); its depthwise kernel cannot, so depthwise convolutions
keep 8 bits. This exports plain int8 (the logits layer float, as every int8 file; GPTQ
rounding; no fallback) both ways from one checkpoint and judges each file on the export's
tuning and gate photos: agreement, flips, mean logit error, top-1 points lost.
On a CPU with VNNI both variants are the same file (8 bits everywhere).

Writes `results/onnx-weight-grid-<model>-<data>-<machine>.{json,md}`.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_tag, write_result
from forecast_agreement import judge as judge_logits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sd198-27"
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"7 bits everywhere": False, "8-bit depthwise (default)": True}  # name: do depthwise layers keep 8 bits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="calibration, tuning and gate photos (an ImageFolder)")
    parser.add_argument("--work", type=Path, default=Path("export/onnx-weight-grid"), help="where the files go")
    return parser.parse_args(argv)


def judge(checkpoint, runtime, images) -> dict:
    from dermmobile.targets.base import TorchRuntime, batched

    reference = batched(TorchRuntime(checkpoint.model).predict, images.arrays, 16)
    return judge_logits(reference, batched(runtime.predict, images.arrays, 16), images, list(checkpoint.meta.labels))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dermmobile.bench.sweep import machine_info, versions
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import export_artifact, plan_export
    from dermmobile.quantization.export import always_float, plan_layers
    from dermmobile.quantization.options import Int8Options
    from dermmobile.targets import get_target
    from dermmobile.targets.onnx import int8_saturates

    checkpoint = load_checkpoint(args.checkpoint)
    target = get_target("onnx")
    rows = []
    for index, (name, depthwise) in enumerate(VARIANTS.items()):
        plan = plan_export(checkpoint, "onnx", "int8", args.work, calib_data=args.data, int8=Int8Options(fallback=False))
        plan.variant = f"variant{index}"
        started = time.perf_counter()
        no_depthwise = nullcontext() if depthwise else mock.patch("dermmobile.targets.onnx.is_depthwise", return_value=False)
        with no_depthwise:
            artifact = export_artifact(checkpoint, target, plan, always_float(checkpoint, plan, plan_layers(checkpoint, plan)))
        runtime = target.load(artifact.path, artifact.manifest)
        seconds = round(time.perf_counter() - started, 1)
        tuning, gate = judge(checkpoint, runtime, plan.tuning), judge(checkpoint, runtime, plan.check)
        notes = artifact.manifest.notes
        rows.append({"variant": name, "export_seconds": seconds, "weight_bits": notes.get("weight_bits"),
                     "weight_bits_8_layers": notes.get("weight_bits_8_layers"), "tuning": tuning, "gate": gate})  # fmt: skip
        print(rows[-1], flush=True)
    machine = machine_info()
    report = {"checkpoint": str(args.checkpoint), "data": str(args.data), "saturating_cpu": int8_saturates(),
              "machine": machine, "versions": versions(), "rows": rows}  # fmt: skip
    lines = [
        f"# ONNX int8 weight grids: {checkpoint.meta.arch} on {args.data.name}",
        "",
        f"CPU: {machine['cpu']} ({machine['cores']} cores, load {machine['load_average_1_5_15min']}); onnxruntime's int8 "
        f"GEMM {'can' if report['saturating_cpu'] else 'cannot'} saturate here. Plain int8 (logits float, GPTQ, no fallback).",
        f"Checkpoint: `{args.checkpoint}`; the export's own photos: {rows[0]['tuning']['images']} tuning, "
        f"{rows[0]['gate']['images']} gate (disjoint from the calibration images and from each other).",
        "",
        "| weights | tuning agreement (flips) | tuning logit error | gate agreement (flips) | gate logit error "
        "| gate top-1 lost |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, g = row["tuning"], row["gate"]
        lines.append(f"| {row['variant']} | {t['agreement']:.2%} ({t['flips']}) | {t['mean_abs_logit']:.4f} "
                     f"| {g['agreement']:.2%} ({g['flips']}) | {g['mean_abs_logit']:.4f} "
                     f"| {g['top1_points_lost']:.2f} |")  # fmt: skip
    stem = f"onnx-weight-grid-{checkpoint.meta.arch}-{args.data.name}-{machine_tag()}"
    for path in write_result(RESULTS, stem, report, "\n".join(lines) + "\n"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
