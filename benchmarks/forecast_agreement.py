"""Does the fallback's forecast agreement predict the gate? Observed and forecast agreement, tuning and gate photos.

The accuracy-aware fallback judges each int8 file on the 192 tuning photos by the agreement
forecast from their logit errors (dermmobile/quantization/fallback.py, `forecast_agreement`),
not by how many of them flipped. This exports int8 files with chosen layers in float (the
logits layer always; no search) from one checkpoint, and for each reads, on the export's own
tuning and gate photos: observed agreement (flips), forecast agreement, mean logit error and
top-1 points lost. A forecast worth searching on reads the same on both sets; the observed
counts are the noise it replaces. And the forecast the search makes (the tuning photos' errors
on the float margins of calibration and tuning photos, those unseen by training weighted as
the gate's share: fallback.MarginPopulation) against the same errors on the gate photos' own
margins, which it stands in for (the search may not look at the gate).

    python benchmarks/forecast_agreement.py --checkpoint best.safetensors \
        --files executorch onnx tflite tflite+_conv_stem+_blocks.0._depthwise_conv

Writes `results/forecast-agreement-<model>-<data>-<machine>.{json,md}`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_tag, write_result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sd198-27"
RESULTS = Path(__file__).resolve().parent / "results"
FILES = ["executorch", "onnx", "tflite", "tflite+_conv_stem+_blocks.0._depthwise_conv"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="calibration, tuning and gate photos (an ImageFolder)")
    parser.add_argument("--files", nargs="+", default=FILES,
                        help="int8 files: TARGET or TARGET+LAYER+LAYER (layers left float beside the logits)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("export/forecast-agreement"), help="where the files go")
    return parser.parse_args(argv)


def judge(reference, logits, images, labels) -> dict:
    from dermmobile.parity import compare_logits
    from dermmobile.quantization.fallback import forecast_agreement

    report = compare_logits(reference, logits, labels, None, images.targets)
    return {
        "images": len(images.arrays),
        "agreement": round(report.agreement, 4),
        "flips": len(report.flips),
        "forecast_agreement": round(forecast_agreement(reference, logits), 4),
        "mean_abs_logit": round(report.mean_abs_logit, 4),
        "top1_points_lost": round((report.reference_accuracy - report.accuracy) * 100, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dermmobile.bench.sweep import machine_info, versions
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import export_artifact, plan_export
    from dermmobile.quantization.export import always_float, forecast_population, plan_layers
    from dermmobile.quantization.fallback import MarginPopulation, forecast_agreement
    from dermmobile.quantization.options import Int8Options
    from dermmobile.quantization.simulate import float_share
    from dermmobile.targets import get_target
    from dermmobile.targets.base import TorchRuntime, batched

    checkpoint = load_checkpoint(args.checkpoint)
    labels = list(checkpoint.meta.labels)
    rows = []
    for index, spec in enumerate(args.files):
        target_name, *extra = spec.split("+")
        target = get_target(target_name)
        plan = plan_export(checkpoint, target_name, "int8", args.work, calib_data=args.data,
                           int8=Int8Options(fallback=False))  # fmt: skip
        plan.variant = f"file{index}"
        layers = plan_layers(checkpoint, plan)
        unknown = set(extra) - {layer.name for layer in layers}
        if unknown:
            raise SystemExit(f"{spec}: no quantizable layer named {', '.join(sorted(unknown))} in {checkpoint.meta.arch}")
        float_layers = always_float(checkpoint, plan, layers) | frozenset(extra)
        started = time.perf_counter()
        artifact = export_artifact(checkpoint, target, plan, float_layers)
        runtime = target.load(artifact.path, artifact.manifest)
        row = {"target": target_name, "float_layers": sorted(float_layers),
               "float_macs_share": round(float_share(layers, float_layers), 4),
               "export_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        outputs = {}
        for name, images in (("tuning", plan.tuning), ("gate", plan.check)):
            reference = batched(TorchRuntime(checkpoint.model).predict, images.arrays, 16)
            outputs[name] = reference, batched(runtime.predict, images.arrays, 16)
            row[name] = judge(*outputs[name], images, labels)
        (tuning_reference, tuning_logits), (gate_reference, _) = outputs["tuning"], outputs["gate"]
        searched = forecast_agreement(tuning_reference, tuning_logits, forecast_population(checkpoint, plan, tuning_reference))
        on_gate = MarginPopulation.of(np.zeros((0, len(labels))), None, gate_reference)  # no tuning photo among them
        row["tuning"]["search_forecast"] = round(searched, 4)
        row["gate"]["tuning_errors_forecast"] = round(forecast_agreement(tuning_reference, tuning_logits, on_gate), 4)
        rows.append(row)
        print(row, flush=True)
    machine = machine_info()
    gaps = [abs(row["tuning"]["forecast_agreement"] - row["gate"]["forecast_agreement"]) for row in rows]
    summary = {
        "tuning_flip_rate": round(sum(r["tuning"]["flips"] for r in rows) / sum(r["tuning"]["images"] for r in rows), 4),
        "gate_flip_rate": round(sum(r["gate"]["flips"] for r in rows) / sum(r["gate"]["images"] for r in rows), 4),
        "largest_forecast_gap_tuning_vs_gate": round(max(gaps), 4),
    }
    report = {"checkpoint": str(args.checkpoint), "data": str(args.data), "machine": machine, "versions": versions(),
              "summary": summary, "rows": rows}  # fmt: skip
    lines = [
        f"# Forecast against observed agreement: {checkpoint.meta.arch} int8 on {args.data.name}",
        "",
        f"CPU: {machine['cpu']} ({machine['cores']} cores). Each file: plain int8 with the layers named left float "
        "(GPTQ rounding, no search), judged on the export's own photos: "
        f"{rows[0]['tuning']['images']} tuning, {rows[0]['gate']['images']} gate (disjoint, and disjoint from calibration).",
        f"Checkpoint: `{args.checkpoint}`.",
        "",
        "| target | float layers (MACs) | tuning: agreement (flips) | tuning: forecast | gate: agreement (flips) "
        "| gate: forecast | gate: top-1 lost | gate: logit error | search's forecast | tuning errors on gate margins |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, g = row["tuning"], row["gate"]
        floats = ", ".join(f"`{name}`" for name in row["float_layers"])
        lines.append(f"| {row['target']} | {floats} ({row['float_macs_share']:.1%}) | {t['agreement']:.2%} ({t['flips']}) "
                     f"| {t['forecast_agreement']:.2%} | {g['agreement']:.2%} ({g['flips']}) "
                     f"| {g['forecast_agreement']:.2%} | {g['top1_points_lost']:.2f} | {g['mean_abs_logit']:.4f} "
                     f"| {t['search_forecast']:.2%} | {g['tuning_errors_forecast']:.2%} |")  # fmt: skip
    lines += [
        "",
        f"Pooled over the files: tuning photos flipped {summary['tuning_flip_rate']:.2%}, gate photos "
        f"{summary['gate_flip_rate']:.2%}; the forecast on the two sets differed by at most "
        f"{summary['largest_forecast_gap_tuning_vs_gate']:.2%} for any file.",
        "",
        "Search's forecast: the tuning photos' errors on the float margins of the calibration and tuning photos, "
        "those unseen by training (the checkpoint's validation files) weighted as the gate's share of unseen photos "
        "(fallback.MarginPopulation; the search's criterion asks 99 %). Tuning errors on gate margins: the same errors on "
        "the gate photos' float margins, the number the search's forecast stands in for.",
    ]
    stem = f"forecast-agreement-{checkpoint.meta.arch}-{args.data.name}-{machine_tag()}"
    for path in write_result(RESULTS, stem, report, "\n".join(lines) + "\n"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
