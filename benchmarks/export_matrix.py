"""Every target x quantization for one checkpoint: size, export time, parity, then the bench sweep.

    .venv/bin/python benchmarks/export_matrix.py --checkpoint runs/paper-protocol/efficientnet_lite0-full/best.safetensors

Exports with dermmobile.exporter. int8 uses the default accuracy-aware fallback and its
three disjoint image sets (calibration, tuning, gate; dermmobile.data.int8_splits); each
int8 target is also exported plain (`--no-fallback`, named `...-int8-plain`) into the same
folder, so the bench times both in the same run and the report gives every fallback's
latency cost against plain int8. Then `dermmobile bench` runs over the held-out test split
at 1 and all threads with PyTorch eager and torch.compile as baselines. Writes
`export-matrix-<arch>-<data>-<machine>.json/.md` and the bench reports in the folder of
the same name. About 30 minutes for efficientnet_lite0 on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import machine_tag, write_result

from dermmobile.bench.report import write_reports
from dermmobile.bench.sweep import BenchConfig, machine_info, run_bench, versions
from dermmobile.checkpoint import load_checkpoint
from dermmobile.cores import usable_cores
from dermmobile.exporter import plan_export, run_plan
from dermmobile.fsutil import atomic_write_json
from dermmobile.quantization.options import Int8Options
from dermmobile.readers import read_json
from dermmobile.tables import markdown_table
from dermmobile.targets import target_names, valid_combinations
from dermmobile.targets.base import QUANTIZATIONS

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
PLAIN = "plain"  # the variant name of int8 exported without the fallback


def export_all(checkpoint_path: Path, data: Path, out: Path, calib_count: int, timeout: float | None,
               targets: list[str], quantizations: list[str], plain: bool = True) -> list[dict]:  # fmt: skip
    checkpoint = load_checkpoint(checkpoint_path)
    combos = valid_combinations()
    rows = []
    for quantize in quantizations:
        chosen = [t for t in targets if quantize in combos[t]]
        variants = [("", True), (PLAIN, False)] if quantize == "int8" and plain else [("", True)]
        for variant, fallback in variants if chosen else []:
            calib = data if quantize == "int8" else None
            plan = plan_export(checkpoint, chosen, quantize, out, calib_data=calib, calib_count=calib_count, timeout=timeout,
                               int8=Int8Options(fallback=fallback))  # fmt: skip
            plan.variant = variant
            rows += [_row(outcome, quantize, variant) for outcome in run_plan(checkpoint, plan)]
    return rows


def _row(outcome, quantize: str, variant: str) -> dict:
    manifest = outcome.artifact.manifest if outcome.artifact else None
    parity = (manifest.parity if manifest else None) or {}
    flips = parity.get("flips") or []
    return {
        "target": outcome.target, "quantization": quantize, "variant": variant, "seconds": outcome.seconds,
        "file": manifest.file if manifest else None, "bytes": manifest.bytes if manifest else None,
        "status": manifest.status if manifest else "error", "error": outcome.error,
        "parity_images": parity.get("images"), "agreement": parity.get("agreement"), "flips": len(flips),
        "flip_margins": sorted(round(f["margin"], 3) for f in flips), "margin_median": parity.get("reference_margin_median"),
        "accuracy": parity.get("accuracy"), "reference_accuracy": parity.get("reference_accuracy"),
        "mean_abs_logit": parity.get("mean_abs_logit"), "max_abs_logit": parity.get("max_abs_logit"),
        "unseen_by_training": parity.get("unseen_by_training"),
        "float_layers": manifest.float_layers if manifest else None,
        "float_macs_share": manifest.float_macs_share if manifest else None,
        "op_counts": manifest.op_counts if manifest else None,
        "images": {"calibration": manifest.calibration, "tuning": manifest.tuning_images, "gate": manifest.gate_images}
        if manifest and manifest.quantization == "int8" else None,
    }  # fmt: skip


def latency_summary(exports: list[dict], bench: dict) -> dict:
    """p50 of every int8 artifact against plain int8 and PyTorch eager, per thread count, from the same bench run."""
    p50 = {(r["artifact"], r["threads"]): (r.get("latency_ms") or {}).get("p50") for r in bench["rows"]}
    threads = sorted({r["threads"] for r in bench["rows"]})
    by_target = {(e["target"], e["variant"]): e for e in exports if e["quantization"] == "int8" and e["file"]}
    out = {}
    for (target, variant), row in by_target.items():
        if variant:
            continue
        plain = by_target.get((target, PLAIN))
        for t in threads:
            mine, base = p50.get((row["file"], t)), p50.get((plain["file"], t)) if plain else None
            eager = p50.get(("pytorch-eager", t))
            out[f"{target}@{t}"] = {
                "p50_ms": mine, "plain_int8_p50_ms": base, "eager_p50_ms": eager,
                "fallback_cost": mine / base if mine and base else None, "vs_eager": mine / eager if mine and eager else None,
            }  # fmt: skip
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def markdown(report: dict) -> str:
    lines = [
        f"# Export matrix: {report['arch']} on {report['data']} ({report['machine']['cores']}-core {report['machine']['arch']})",
        "",
        f"CPU: {report['machine'].get('cpu')}. Load average when the exports started: "
        f"{report['machine'].get('load_average_1_5_15min')}, when the bench started: "
        f"{report.get('bench_machine', report['machine']).get('load_average_1_5_15min')}. fp32/fp16 parity on the "
        "held-out test split. int8: calibration, tuning and gate images are disjoint (counts below); the gate images "
        "judged each artifact once, after the fallback had chosen on the tuning images. `plain` is int8 without the "
        "fallback, for comparison. Latency: the bench report beside this file.",
        "",
    ]
    cells = []
    for row in report["exports"]:
        size = f"{row['bytes'] / 1e6:.2f} MB" if row["bytes"] else "-"
        top1 = f"{row['accuracy']:.1%} ({row['reference_accuracy']:.1%})" if row["accuracy"] is not None else "-"
        unseen = row.get("unseen_by_training")
        unseen_cell = f"{unseen['agreement']:.1%} ({unseen['flips']} of {unseen['images']})" if unseen else "-"
        floats = row.get("float_layers")
        float_cell = "-" if floats is None else f"{len(floats)} ({_pct(row['float_macs_share'])})"
        status = row["status"] if not row["error"] else f"{row['status']}: {row['error'][:160]}"
        quant = row["quantization"] + (f" {row['variant']}" if row.get("variant") else "")
        cells.append([row["target"], quant, size, f"{row['seconds']:.0f} s", row["parity_images"] or "-", _pct(row["agreement"]),
                      row["flips"], unseen_cell, top1, float_cell, status])  # fmt: skip
    headers = ["target", "quantization", "size", "export time", "parity images", "agreement", "flips",
               "unseen: agreement (flips)", "top-1 (ref)", "float layers (MACs)", "status"]  # fmt: skip
    lines += [markdown_table(cells, headers), "", "## int8: flips, margins and the cost of the fallback", ""]
    for row in (r for r in report["exports"] if r["quantization"] == "int8" and r["file"]):
        images = row.get("images") or {}
        counts = ", ".join(f"{k} {(v or {}).get('count')}" for k, v in images.items())
        lines.append(
            f"- **{row['file']}**: {counts}; flip margins {row['flip_margins']} (median margin of all images "
            f"{row['margin_median']:.2f}); float layers: {', '.join(row['float_layers'] or []) or 'none'}; ops {row['op_counts']}"
        )
    latency = []
    for key, v in report["latency"].items():
        ms = ["-" if v[k] is None else f"{v[k]:.2f} ms" for k in ("p50_ms", "plain_int8_p50_ms", "eager_p50_ms")]
        cost = "-" if v["fallback_cost"] is None else f"{v['fallback_cost']:.2f}x"
        eager = "-" if v["vs_eager"] is None else f"{v['vs_eager']:.2f}x"
        latency.append([key, ms[0], ms[1], cost, ms[2], eager])
    headers = ["int8 artifact @ threads", "p50", "plain int8 p50", "fallback cost", "PyTorch eager p50", "vs eager"]
    lines += ["", markdown_table(latency, headers)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--export-dir", type=Path, default=Path("export/matrix"))
    parser.add_argument("--calib-count", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, usable_cores()}))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800, help="per conversion, in a subprocess")
    parser.add_argument("--targets", nargs="+", default=target_names(), help="default: every target")
    parser.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS), help="default: every quantization")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-plain", action="store_true", help="int8: skip the plain (--no-fallback) exports")
    parser.add_argument("--phase", choices=["all", "export", "bench"], default="all",
                        help="export: export only (accuracy does not need an idle machine) and keep the rows in "
                        "EXPORT_DIR/exports.json; bench: time those exports later, on an idle machine")  # fmt: skip
    args = parser.parse_args(argv)
    arch = load_checkpoint(args.checkpoint).meta.arch
    tag = f"{arch}-{args.data.name}-{machine_tag()}"
    machine = machine_info()  # the load average before this script's own work
    saved = args.export_dir / "exports.json"
    if args.phase == "bench":
        if not saved.is_file():
            parser.error(f"{saved} does not exist: run --phase export first (same --export-dir)")
        saved_run = read_json(saved, "export rows")
        exports, export_machine = saved_run["exports"], saved_run["machine"]
    else:
        export_machine = machine
        exports = export_all(args.checkpoint, args.data, args.export_dir, args.calib_count, args.timeout, args.targets,
                             args.quantizations, not args.no_plain)  # fmt: skip
        atomic_write_json(saved, {"machine": export_machine, "exports": exports})
        if args.phase == "export":
            print(f"exported; rows in {saved}. Time them with --phase bench on an idle machine.")
            return 0
    bench_machine = machine_info()  # the load the timings ran under
    bench = run_bench(BenchConfig(data=args.data, artifacts=args.export_dir, checkpoint=args.checkpoint,
                                  threads=args.threads, iters=args.iters, compile=not args.no_compile))  # fmt: skip
    write_reports(bench, args.out / f"export-matrix-{tag}")
    report = {"arch": arch, "data": args.data.name, "calib_count": args.calib_count, "machine": export_machine,
              "bench_machine": bench_machine,
              "versions": versions(), "exports": exports, "latency": latency_summary(exports, bench),
              "bench": f"export-matrix-{tag}/bench.json"}  # fmt: skip
    _, md_path = write_result(args.out, f"export-matrix-{tag}", report, markdown(report))
    print(f"wrote {md_path} and {args.out / f'export-matrix-{tag}'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
